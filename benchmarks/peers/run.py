"""The peers' table: what a span (or its nearest equivalent) costs in other libraries, next to otel_vision's `stage()`.

Each peer runs in its own venv under a cache directory outside the repository (their pins conflict with ours and
with each other), created on first use and reused while its pinned requirements are unchanged. For each peer this
script starts a rotel on 127.0.0.1 (from this venv's `rotel` package, dropping what it receives, as
`benchmarks/bench_stage.py` does), runs `peer.py` in the peer's venv against it, and stops it. Then it runs
`benchmarks/bench_stage.py` in this interpreter (otel_vision's default configuration) and prints one markdown table.
A peer that does not install or does not run gets a row saying why. Every step has a timeout; nothing is left
running.

    python benchmarks/peers/run.py [--rounds 40] [--calls 2000] [--peers sdk openlit ...] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

# The OpenTelemetry family openlit and traceloop-sdk resolve to: pip cannot find one consistent newest set of the
# contrib instrumentations on its own (some 0.66b2 packages are missing), so it is pinned here.
OTEL_145_1 = [
    "opentelemetry-api==1.45.1",
    "opentelemetry-sdk==1.45.1",
    "opentelemetry-exporter-otlp==1.45.1",
    "opentelemetry-instrumentation==0.66b1",
    "opentelemetry-semantic-conventions==0.66b1",
]
OTEL_145_2 = ["opentelemetry-sdk==1.45.2", "opentelemetry-exporter-otlp-proto-grpc==1.45.2"]


@dataclass(frozen=True)
class Peer:
    label: str
    requirements: tuple[str, ...]


PEERS = {
    "sdk": Peer("OpenTelemetry SDK", tuple(OTEL_145_2)),
    "openlit": Peer("openlit", ("openlit==1.45.0", *OTEL_145_1)),
    # traceloop-sdk 0.62.4 imports httpx without declaring it.
    "traceloop": Peer("traceloop-sdk", ("traceloop-sdk==0.62.4", "httpx==0.28.1", *OTEL_145_1)),
    "logfire": Peer("logfire", ("logfire==5.4.0", *OTEL_145_2)),
    "prometheus": Peer("prometheus_client", ("prometheus-client==0.26.0", *OTEL_145_2)),
    "torch": Peer("torch.profiler.record_function", ("torch==2.14.1", *OTEL_145_2)),
}


@dataclass
class Outcome:
    returncode: int | None  # None: timed out
    output: str


def run_bounded(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> Outcome:
    """Run a command in its own process group; on timeout kill that group (and nothing else)."""
    process = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True, text=True
    )
    try:
        output, _ = process.communicate(timeout=timeout)
        return Outcome(process.returncode, output)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return Outcome(None, output)


def last_lines(text: str, n: int = 3) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("WARNING: Location")]
    return " / ".join(lines[-n:])[-400:]


def ensure_venv(name: str, peer: Peer, cache: Path, timeout: float) -> tuple[Path | None, str]:
    """The peer's venv, created or reused; (python, "") or (None, why not)."""
    venv = cache / name
    python = venv / "bin" / "python"
    stamp = venv / "otel-vision-bench-requirements.txt"
    wanted = "\n".join(peer.requirements) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python, ""
    if not python.exists():
        shutil.rmtree(venv, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        made = run_bounded([base, "-m", "venv", str(venv)], 120)
        if made.returncode != 0:
            return None, f"venv: {last_lines(made.output)}"
    print(f"[{name}] pip install {' '.join(peer.requirements)}", file=sys.stderr, flush=True)
    started = time.monotonic()
    installed = run_bounded([str(python), "-m", "pip", "install", "-q", *peer.requirements], timeout)
    if installed.returncode != 0:
        why = "timed out" if installed.returncode is None else last_lines(installed.output)
        return None, f"does not install ({' '.join(peer.requirements[:1])}): {why}"
    stamp.write_text(wanted)
    print(f"[{name}] installed in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return python, ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rotel:
    """A rotel on 127.0.0.1 that accepts OTLP over gRPC and HTTP and drops it (as bench_stage.py uses)."""

    def __enter__(self) -> Rotel:
        import rotel

        self.grpc, self.http = free_port(), free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="otel-vision-peers-"))
        self.process = subprocess.Popen(
            [
                str(Path(rotel.__file__).parent / "rotel-agent"), "start", "--exporter", "blackhole",
                "--otlp-grpc-endpoint", f"127.0.0.1:{self.grpc}", "--otlp-http-endpoint", f"127.0.0.1:{self.http}",
                "--pid-file", str(self.workdir / "rotel.pid"), "--log-file", str(self.workdir / "rotel.log"),
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        for port in (self.grpc, self.http):
            while True:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.__exit__()
                    raise RuntimeError("rotel did not start within 10 s")
                time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def peer_env() -> dict[str, str]:
    """The environment minus this venv and any OTEL_/TRACELOOP_/LOGFIRE_ setting, so each peer starts from defaults."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "TRACELOOP_", "LOGFIRE_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_peer(name: str, python: Path, args: argparse.Namespace) -> dict[str, object]:
    try:
        collector = Rotel().__enter__()
    except (ImportError, OSError, RuntimeError) as e:
        return {"error": f"no collector: rotel did not start ({e}); run this script in the project's venv"}
    try:
        outcome = run_bounded(
            [
                str(python), str(HERE / "peer.py"), "--peer", name, "--grpc-port", str(collector.grpc),
                "--http-port", str(collector.http), "--rounds", str(args.rounds), "--calls", str(args.calls),
            ],
            args.run_timeout,
            env=peer_env(),
        )  # fmt: skip
    finally:
        collector.__exit__()
    for line in reversed(outcome.output.splitlines()):
        if line.startswith("PEER-RESULT "):
            result: dict[str, object] = json.loads(line.removeprefix("PEER-RESULT "))
            return result
    why = f"timed out after {args.run_timeout:.0f} s" if outcome.returncode is None else f"exit {outcome.returncode}"
    return {"error": f"did not run ({why}): {last_lines(outcome.output)}"}


def run_otel_vision(args: argparse.Namespace) -> dict[str, object]:
    """benchmarks/bench_stage.py in this interpreter; its markdown rows, parsed."""
    env = dict(os.environ, YOLO_OFFLINE="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, str(REPO / "benchmarks" / "bench_stage.py"), "--rounds", str(args.rounds)]
    outcome = run_bounded([*cmd, "--calls", str(args.calls)], args.run_timeout, env=env)
    rows = []
    for line in outcome.output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and not cells[0].startswith(("variant", "---")):
            try:
                rows.append({"variant": cells[0], "wall_us": float(cells[1]), "cpu_us": float(cells[3])})
            except ValueError:
                continue
    if outcome.returncode != 0 or not rows:
        why = "timed out" if outcome.returncode is None else f"exit {outcome.returncode}"
        return {"error": f"bench_stage.py did not run ({why}): {last_lines(outcome.output)}"}
    from importlib import metadata

    lines = outcome.output.strip().splitlines()
    header = next((line for line in lines if "configuration:" in line), lines[0])
    configuration = re.search(r"configuration: (.*?\)),", header)
    # Anything otel_vision itself printed (e.g. spans it could not deliver) goes under the table too.
    said = [line for line in lines if line.startswith("otel_vision")]
    return {
        "rows": rows,
        "versions": {
            "otel_vision": metadata.version("otel_vision"),
            "opentelemetry-sdk": metadata.version("opentelemetry-sdk"),
        },
        "export": configuration.group(1) if configuration else "see bench_stage.py",
        "note": f"bench_stage.py: {header}" + "".join(f"; it printed: {line}" for line in said),
    }


def table(results: dict[str, dict[str, object]]) -> str:
    out = [
        "| peer | versions | variant | exports | µs per call (wall, calling thread) | × bare SDK span "
        "(same process) | process CPU µs per call (all threads) | × bare (CPU) |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        label = PEERS[name].label if name in PEERS else "otel_vision (`benchmarks/bench_stage.py`)"
        if "error" in result:
            out.append(f"| {label} | | **not measured**: {result['error']} | | | | | |")
            continue
        rows = result["rows"]
        assert isinstance(rows, list)
        bare = next(r for r in rows if str(r["variant"]).startswith("bare SDK span"))
        versions = result.get("versions", {})
        assert isinstance(versions, dict)
        version_text = ", ".join(f"{k} {v}" for k, v in versions.items())
        for row in rows:
            export = str(row.get("export", result.get("export", ""))).replace("|", "/")
            wall, cpu = float(row["wall_us"]), float(row["cpu_us"])
            out.append(
                f"| {label} | {version_text} | {row['variant']} | {export} | {wall:.2f} | "
                f"{wall / float(bare['wall_us']):.2f} | {cpu:.2f} | {cpu / float(bare['cpu_us']):.2f} |"
            )
    notes = []
    for name, result in results.items():
        delivered = result.get("spans_delivered")
        if isinstance(delivered, dict):
            (peer_ok, peer_failed), (ref_ok, ref_failed) = delivered["peer"], delivered["reference"]
            notes.append(
                f"- {PEERS[name].label}: spans accepted by rotel: peer {peer_ok:,} (not accepted: {peer_failed:,}), "
                f"bare reference {ref_ok:,} (not accepted: {ref_failed:,}); warnings logged: "
                f"{result.get('logged_warnings')}"
                + (f" (first: {result['first_warning']})" if result.get("first_warning") else "")
            )
        if result.get("note"):
            notes.append(f"- {result['note']}")
    return "\n".join(out) + "\n\n" + "\n".join(notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--peers", nargs="*", default=[*PEERS, "otel_vision"], choices=[*PEERS, "otel_vision"])
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "otel-vision-bench")
    parser.add_argument("--install-timeout", type=float, default=900, help="seconds for one peer's pip install")
    parser.add_argument("--run-timeout", type=float, default=600, help="seconds for one peer's measurement")
    args = parser.parse_args()
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls must be at least 1")

    started = time.monotonic()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, object]] = {}
    for name in args.peers:
        print(f"[{name}] ...", file=sys.stderr, flush=True)
        if name == "otel_vision":
            results[name] = run_otel_vision(args)
            continue
        python, why = ensure_venv(name, PEERS[name], args.cache_dir, args.install_timeout)
        results[name] = run_peer(name, python, args) if python is not None else {"error": why}

    print(
        f"{time.strftime('%Y-%m-%d', time.gmtime())}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, {args.rounds} rounds x {args.calls} calls per variant, "
        f"{time.monotonic() - started:.0f} s\n"
    )
    print(table(results))


if __name__ == "__main__":
    main()
