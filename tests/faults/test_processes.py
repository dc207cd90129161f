"""Forked children, multiprocessing pools and gunicorn workers each export their own spans, as their own process.

Asserted on what rotel received: span names with the ``process.pid`` and ``service.instance.id`` of their resource.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.faults.support import child_env, endpoint_env, run_program
from tests.test_wire import Rotel, _free_port, _wait_port

pytestmark = pytest.mark.integration


def _spans_by_process(rotel: Rotel) -> dict[str, set[tuple[int, str]]]:
    """Span name -> {(process.pid, service.instance.id)} from rotel's detailed log."""
    found: dict[str, set[tuple[int, str]]] = {}
    for block in re.split(r"\nResourceSpans #\d+\n", rotel.text())[1:]:
        pid = re.search(r"process\.pid: Int\((\d+)\)", block)
        instance = re.search(r"service\.instance\.id: Str\(([^)]+)\)", block)
        if pid is None or instance is None:
            continue
        for name in re.findall(r"Name\s+: (\S+)", block):
            found.setdefault(name, set()).add((int(pid.group(1)), instance.group(1)))
    return found


def _wait_spans(rotel: Rotel, names: set[str], timeout: float = 20) -> dict[str, set[tuple[int, str]]]:
    deadline = time.monotonic() + timeout
    while True:
        found = _spans_by_process(rotel)
        if names <= found.keys() or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


FORK_AND_POOL = """
import json, multiprocessing, os, otel_vision
otel_vision.configure(service_name="procs", gpu=False)

def work(i):
    with otel_vision.stage("{pool_span}"):
        return os.getpid()

if __name__ == "__main__":
    with otel_vision.stage("parent-work"):
        pass
    child = os.fork()
    if child == 0:
        with otel_vision.stage("forked-child"):
            pass
        raise SystemExit(0)
    os.waitpid(child, 0)
    {pool_code}
    print(json.dumps({{"parent": os.getpid(), "child": child, "workers": sorted(workers)}}))
"""
WITH_POOL = """with multiprocessing.Pool(2) as pool:
        workers = set(pool.map(work, range(8), chunksize=1))"""
CLOSE_JOIN = """pool = multiprocessing.Pool(2)
    workers = set(pool.map(work, range(8), chunksize=1))
    pool.close()
    pool.join()"""


@pytest.mark.parametrize(
    ("pool_code", "protocol"),
    [(WITH_POOL, "grpc"), (CLOSE_JOIN, "http/protobuf")],
    ids=["with-pool-terminates-grpc", "close-join-http"],
)
def test_forked_children_and_pool_workers_export_as_themselves(tmp_path: Path, pool_code: str, protocol: str) -> None:
    """No user code flushes: the forked child and every pool worker deliver their spans, each with its own pid and
    service.instance.id, and none of them re-sends the parent's spans."""
    rotel = Rotel(tmp_path)
    try:
        program = FORK_AND_POOL.replace("{pool_span}", "pool-work").replace("{pool_code}", pool_code)
        result = run_program(
            program.replace("{{", "{").replace("}}", "}"),
            endpoint_env(protocol, rotel.grpc_port if protocol == "grpc" else rotel.http_port),
        )
        assert result.returncode == 0, result.stderr
        pids = result.last_json()
        found = _wait_spans(rotel, {"parent-work", "forked-child", "pool-work"})
        assert {pid for pid, _ in found["parent-work"]} == {pids["parent"]}
        assert {pid for pid, _ in found["forked-child"]} == {pids["child"]}
        assert {pid for pid, _ in found["pool-work"]} == set(pids["workers"])
        instances = [i for spans in found.values() for _, i in spans]
        assert len(set(instances)) == len({pid for spans in found.values() for pid, _ in spans})
        assert rotel.text().count("Name           : pool-work") == 8
        assert rotel.text().count("Name           : parent-work") == 1
    finally:
        rotel.stop()


SIGNALS_STAY_WITH_THE_APPLICATION = """
import json, multiprocessing, os, signal, time, otel_vision
handle = otel_vision.configure(service_name="signals", gpu=False)
handle.wait_ready(30)

def check(_=None):
    # A signal blocked on this thread and sent to the process: the kernel hands it to any thread that does not
    # block it, and Python would note it for a main thread that may never look (one waiting in C, as an idle pool
    # worker does when its pool terminates it). Nobody else takes it: it stays pending until this thread unblocks.
    with otel_vision.stage("signals-work"):
        pass
    handle.force_flush(10000)  # exported: gRPC's threads run too (a child's pipeline is its own)
    signal.signal(signal.SIGUSR1, lambda *args: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGUSR1}})
    os.kill(os.getpid(), signal.SIGUSR1)
    time.sleep(0.3)
    pending = signal.SIGUSR1 in signal.sigpending()
    threads = len(os.listdir("/proc/self/task"))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {{signal.SIGUSR1}})
    return {{"pid": os.getpid(), "pending": pending, "threads": threads}}

if __name__ == "__main__":
    report = {{"parent": check()}}
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.write(write, json.dumps(check()).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    report["child"] = json.loads(os.read(read, 4096))
    with multiprocessing.get_context("fork").Pool(1) as pool:
        report["worker"] = pool.apply(check)
    print(json.dumps(report))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_no_thread_of_ours_takes_a_signal_meant_for_the_application(tmp_path: Path, protocol: str) -> None:
    """In the configured parent, a forked child and a pool worker, a signal sent to the process while the main
    thread blocks it stays pending: none of the threads running beside it (ours, the SDK's, gRPC's) takes it. One
    that did would leave the application's handler unrun; our SIGTERM flush made ``Pool.terminate()`` wait forever
    for an idle worker that way (found as a 1-in-100 hang of the pool test above)."""
    rotel = Rotel(tmp_path)
    try:
        program = SIGNALS_STAY_WITH_THE_APPLICATION.replace("{{", "{").replace("}}", "}")
        result = run_program(
            program, endpoint_env(protocol, rotel.grpc_port if protocol == "grpc" else rotel.http_port)
        )
        assert result.returncode == 0, result.stderr
        report = result.last_json()
        for where in ("parent", "child", "worker"):
            seen = report[where]
            assert seen["threads"] > 2, report  # threads beside the main one that could have taken it
            assert seen["pending"], (where, report)
        pids = {report[where]["pid"] for where in ("parent", "child", "worker")}
        assert len(pids) == 3, report
        found = _wait_spans(rotel, {"signals-work"})
        assert {pid for pid, _ in found["signals-work"]} == pids
    finally:
        rotel.stop()


REAP = """
def reap(pid, seconds):  # wait for a child at most `seconds`, then kill it; whether it ended by itself
    import os, time
    deadline = time.monotonic() + seconds
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() >= deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return False
        time.sleep(0.02)
    return True
"""
FORKS_WHILE_THREADS_WORK = (
    REAP
    + """
import json, os, threading, time, otel_vision
{setup}
stop = threading.Event()

def spin():  # spans end nonstop, so forks land while our threads drain and hand spans over
    while not stop.is_set():
        with otel_vision.stage("threads-work"):
            pass

threads = [threading.Thread(target=spin, daemon=True) for _ in range(2)]
for thread in threads:
    thread.start()
with otel_vision.stage("parent-work"):
    pass
children, hung, flushed = [], 0, []
for i in range(12):
    time.sleep(0.01 + (i % 5) * 0.007)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        with otel_vision.stage(f"forked-{i}"):
            pass
        result = {flush}
        os.write(write, json.dumps(result).encode())
        os._exit(0)  # no atexit flush: only the flush above delivers the child's span
    os.close(write)
    if reap(pid, 15):
        flushed.append(json.loads(os.read(read, 4096) or b"null"))
    else:
        hung += 1
    os.close(read)
    children.append(pid)
stop.set()
for thread in threads:
    thread.join(5)
print(json.dumps({"parent": os.getpid(), "children": children, "hung": hung, "flushed": flushed}))
"""
)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_forks_while_our_threads_work_neither_hang_nor_lose_the_childs_spans(tmp_path: Path, protocol: str) -> None:
    """Twelve forks land while spans end nonstop on two threads (our hand-over, metric and export threads busy):
    every child flushes through the handle the parent got from configure(), within its timeout, and what it flushed
    is its own span, delivered by its own pipeline; the parent's spans are not sent again. Over gRPC the forks also
    wait for the exports in flight (gRPC skips its fork handlers during a call, and the child's gRPC then fails)."""
    rotel = Rotel(tmp_path)
    try:
        program = FORKS_WHILE_THREADS_WORK.replace(
            # Forks under load, not during configure()'s background set-up: it is complete before the first fork.
            "{setup}",
            'handle = otel_vision.configure(service_name="forks", gpu=False)\nhandle.wait_ready(30)',
        ).replace("{flush}", "handle.force_flush(5000)")
        port = rotel.grpc_port if protocol == "grpc" else rotel.http_port
        result = run_program(program, endpoint_env(protocol, port))
        assert result.returncode == 0, result.stderr
        report = result.last_json()
        assert report["hung"] == 0 and report["flushed"] == [True] * 12, report
        names = {f"forked-{i}" for i in range(12)}
        found = _wait_spans(rotel, names | {"parent-work"})
        for i, pid in enumerate(report["children"]):  # type: ignore[arg-type]
            assert {p for p, _ in found.get(f"forked-{i}", set())} == {pid}
        assert rotel.text().count("Name           : parent-work") == 1
    finally:
        rotel.stop()


IMPORT_DURING_FORK = (
    REAP
    + """
import importlib.abc, importlib.machinery, json, os, sys, threading, time, otel_vision
handle = otel_vision.configure(service_name="imports", gpu=False)
handle.wait_ready(30)
# One of our threads imports a module when the fork comes: netrc, which requests imports within each request. Our
# setup imported it already; forgotten here, the export thread imports it again, slowly, for the first batch.
sys.modules.pop("netrc", None)
importing, importers = threading.Event(), []

class SlowNetrc(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "netrc":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        real = spec.loader

        class Loader(importlib.abc.Loader):
            def create_module(self, spec):
                return None

            def exec_module(self, module):
                importers.append(threading.current_thread().name)
                importing.set()
                time.sleep(0.4)
                real.exec_module(module)

        spec.loader = Loader()
        return spec

sys.meta_path.insert(0, SlowNetrc())
with otel_vision.stage("parent-work"):
    pass
armed = importing.wait(10)
read, write = os.pipe()
started = time.monotonic()
pid = os.fork()
if pid == 0:
    import netrc, shlex  # the application's imports of the same modules, in the child
    with otel_vision.stage("forked-child"):
        pass
    os.write(write, json.dumps(handle.force_flush(5000)).encode())
    os._exit(0)
fork_s = time.monotonic() - started
os.close(write)
hung = not reap(pid, 15)
flushed = None if hung else json.loads(os.read(read, 4096) or b"null")
print(json.dumps({"armed": armed, "importers": importers, "fork_s": fork_s, "hung": hung, "flushed": flushed,
                  "child": pid, "parent_flushed": handle.force_flush(5000)}))
"""
)


def test_a_fork_while_our_thread_imports_waits_for_the_import(tmp_path: Path) -> None:
    """A fork that lands while our export thread imports a module waits for that import to end (at most a second):
    otherwise the child inherits the module's import lock held by a thread it does not have, and its own import of
    that module, the application's included, waits forever. Here the child imports the module, and its span and
    the parent's reach rotel."""
    rotel = Rotel(tmp_path)
    try:
        result = run_program(IMPORT_DURING_FORK, endpoint_env("http/protobuf", rotel.http_port))
        assert result.returncode == 0, result.stderr
        report = result.last_json()
        # The hazard was armed: our export thread was inside the import when the fork came.
        assert report["armed"] and report["importers"] == ["otel-vision-export-traces"], report
        assert report["hung"] is False and report["flushed"] is True and report["parent_flushed"] is True, report
        assert report["fork_s"] < 3, report  # the import's remaining 0.4 s; never more than a second of waiting
        found = _wait_spans(rotel, {"forked-child", "parent-work"})
        assert {p for p, _ in found.get("forked-child", set())} == {report["child"]}
        assert rotel.text().count("Name           : parent-work") == 1
    finally:
        rotel.stop()


CONFIGURE_DURING_FORKS = (
    REAP
    + """
import json, os, threading, time, otel_vision
otel_vision.configure(service_name="reconfigured", gpu=False)
stop = threading.Event()

def reconfigure():  # configure() again and again on another thread: each shuts the previous pipeline down
    while not stop.is_set():
        otel_vision.configure(service_name="reconfigured", gpu=False)

thread = threading.Thread(target=reconfigure, daemon=True)
thread.start()
children, hung = [], 0
for i in range(10):
    time.sleep(0.03 + (i % 3) * 0.01)
    pid = os.fork()
    if pid == 0:
        with otel_vision.stage(f"forked-{i}"):
            pass
        raise SystemExit(0)  # the exit flush delivers the child's span
    hung += not reap(pid, 15)
    children.append(pid)
stop.set()
thread.join(10)
print(json.dumps({"children": children, "hung": hung}))
"""
)


def test_forks_while_another_thread_configures_do_not_hang(tmp_path: Path) -> None:
    """A fork while `configure()` runs on another thread (it holds our set-up lock, and may be shutting the previous
    pipeline down) waits for it: the child builds its own pipeline without finding that lock held by a thread it does
    not have, and its span reaches rotel under its own pid. Before, most such children hung forever at the fork."""
    rotel = Rotel(tmp_path)
    try:
        result = run_program(CONFIGURE_DURING_FORKS, endpoint_env("grpc", rotel.grpc_port))
        assert result.returncode == 0, result.stderr
        report = result.last_json()
        assert report["hung"] == 0, report
        found = _wait_spans(rotel, {f"forked-{i}" for i in range(10)})
        for i, pid in enumerate(report["children"]):  # type: ignore[arg-type]
            assert {p for p, _ in found.get(f"forked-{i}", set())} == {pid}, (i, found.get(f"forked-{i}"))
    finally:
        rotel.stop()


FORK_FROM_A_THREAD = (
    REAP
    + """
import json, os, threading, time, otel_vision
otel_vision.configure(service_name="thread-forks", gpu=False)
report = {}

def later():  # started by the child's only thread, and still working when that thread ends
    time.sleep(0.5)
    with otel_vision.stage("child-later"):
        pass

def forker():
    pid = os.fork()
    if pid == 0:
        with otel_vision.stage("child-work"):
            pass
        threading.Thread(target=later).start()
        return  # the thread ends; in a plain program the process ends with its last thread, status 0
    report.update(hung=not reap(pid, 20), child=pid)

thread = threading.Thread(target=forker)
thread.start()
thread.join()
print(json.dumps(report))
"""
)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_child_forked_from_a_thread_ends_with_its_last_thread(tmp_path: Path, protocol: str) -> None:
    """A child forked from a thread other than the main one ends when its last thread does (no exit hooks run). Our
    export threads must not keep it alive: it ends once its own threads are done, as without us, and what it
    recorded, also in the thread it started, reaches rotel under its pid."""
    rotel = Rotel(tmp_path)
    try:
        port = rotel.grpc_port if protocol == "grpc" else rotel.http_port
        result = run_program(FORK_FROM_A_THREAD, endpoint_env(protocol, port))
        assert result.returncode == 0, result.stderr
        report = result.last_json()
        assert report["hung"] is False, report
        found = _wait_spans(rotel, {"child-work", "child-later"})
        assert {p for p, _ in found.get("child-work", set())} == {report["child"]}, found
        assert {p for p, _ in found.get("child-later", set())} == {report["child"]}, found
    finally:
        rotel.stop()


def test_forks_of_a_captured_pipeline_do_not_hang() -> None:
    """The same forks under ``capture_telemetry()`` (the pipeline is the test's own, kept by the child): each child
    flushes within its timeout and finds its span among what it captured."""
    program = FORKS_WHILE_THREADS_WORK.replace(
        "{setup}",
        (
            "import atexit\nfrom otel_vision.testing import capture_telemetry\ncaptured = capture_telemetry()\n"
            "telemetry = captured.__enter__()\natexit.register(captured.__exit__, None, None, None)"
        ),
    ).replace(
        "{flush}", '[telemetry.handle.force_flush(5000), any(s.name == f"forked-{i}" for s in telemetry.spans())]'
    )
    result = run_program(program, {})
    assert result.returncode == 0, result.stderr
    report = result.last_json()
    assert report["hung"] == 0 and report["flushed"] == [[True, True]] * 12, report


APP = """
import os, otel_vision
otel_vision.configure(service_name="gunicorn-app", gpu=False)

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    with otel_vision.request("handle"):
        body = str(os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
"""


def test_gunicorn_uvicorn_workers_each_export(tmp_path: Path) -> None:
    """gunicorn with two uvicorn workers, the app configuring otel_vision at import: spans from each worker arrive
    with that worker's pid, although uvicorn ends each worker by re-raising SIGTERM (no atexit)."""
    if shutil.which("gunicorn", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("gunicorn is not installed (a dev dependency)")
    pytest.importorskip("uvicorn_worker")
    (tmp_path / "app_module.py").write_text(APP)
    rotel = Rotel(tmp_path)
    port = _free_port()
    args = [
        str(Path(sys.executable).parent / "gunicorn"), "-k", "uvicorn_worker.UvicornWorker", "-w", "2",
        "-b", f"127.0.0.1:{port}", "--graceful-timeout", "10", "--chdir", str(tmp_path),
        "app_module:app",
    ]  # fmt: skip
    with (tmp_path / "gunicorn.err").open("w") as err:
        server = subprocess.Popen(args, stdout=err, stderr=err, env=child_env(endpoint_env("grpc", rotel.grpc_port)))
        served: set[int] = set()
        try:
            _wait_port(port, timeout=30)
            for _ in range(60):  # bounded: until both workers answered, or 60 requests
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    served.add(int(response.read()))
                if len(served) == 2:
                    break
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
            found = _wait_spans(rotel, {"handle"})
            rotel.stop()
    assert served, (tmp_path / "gunicorn.err").read_text()
    assert {pid for pid, _ in found.get("handle", set())} == served
