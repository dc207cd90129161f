"""Peers and probes for the fault suite: a black-hole collector, timed child programs, rotel on chosen ports.

Everything listens on 127.0.0.1 only, lives at most as long as its test, and every loop here is bounded.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT
from tests.test_wire import LOOPBACK_ENV, _free_port


class BlackHole:
    """Accepts TCP connections and never answers (a collector that hangs), until closed."""

    def __init__(self) -> None:
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self._server.settimeout(0.2)
        self.port = int(self._server.getsockname()[1])
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        deadline = time.monotonic() + 300  # bounded even if a test forgets to close it
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self._server.accept()
            except OSError:
                continue
            self._held.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._held:
            conn.close()
        self._server.close()


@contextmanager
def dead_endpoint(kind: str) -> Iterator[int]:
    """A port where nothing listens (``closed``) or where a server accepts and never answers (``blackhole``)."""
    if kind == "closed":
        yield _free_port()
        return
    hole = BlackHole()
    try:
        yield hole.port
    finally:
        hole.close()


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "ROTEL_"))}
    env.update(LOOPBACK_ENV)
    env.update(extra)
    return env


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    ended: float
    """``time.time()`` when the process had exited."""

    def last_json(self) -> dict[str, object]:
        return json.loads(self.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run_program(code: str, env: dict[str, str], timeout: float = 120) -> Finished:
    """Run a snippet in a fresh interpreter and note when it exited."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env=child_env(env), timeout=timeout, cwd=ROOT,
    )  # fmt: skip
    return Finished(result.returncode, result.stdout, result.stderr, time.time())


@contextmanager
def started_program(code: str, env: dict[str, str], workdir: Path, name: str = "program") -> Iterator[Path]:
    """Run a snippet in the background for the ``with`` block, then kill it; yields where its stderr goes."""
    err = workdir / f"{name}.err"
    with err.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            stdout=subprocess.DEVNULL, stderr=stderr, text=True, env=child_env(env), cwd=ROOT,
        )  # fmt: skip
        try:
            yield err
        finally:
            process.kill()
            process.wait(10)


def endpoint_env(protocol: str, port: int, **more: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        **more,
    }
