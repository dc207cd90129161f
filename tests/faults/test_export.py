"""The export path under a closed, black-holed, killed and restarted collector, and under bursts.

Bounds are asserted on wall time and on what the real collector (rotel) received, with generous margins; the
figures the issue asks for are 2 s flush, 3 s shutdown, 3 s exit, 3 s recovery.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.faults.support import dead_endpoint, endpoint_env, run_program, started_program
from tests.test_wire import Rotel, _free_port, _wait_port

pytestmark = pytest.mark.integration

PROTOCOLS = ["grpc", "http/protobuf"]

BOUNDED = """
import json, logging, time, otel_vision
logging.basicConfig(level=logging.INFO)
handle = otel_vision.configure(service_name="fault", gpu=False)
start = time.monotonic()
for i in range(300):
    with otel_vision.stage("work"):
        if i % 100 == 0:
            logging.getLogger("app").info("item %d", i)
work = time.monotonic() - start
start = time.monotonic()
flushed = handle.force_flush(timeout_millis=2000)
flush = time.monotonic() - start
start = time.monotonic()
handle.shutdown(timeout=3)
print(json.dumps({"work": work, "flush": flush, "flushed": flushed, "shutdown": time.monotonic() - start}))
"""


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", ["closed", "blackhole"])
def test_flush_and_shutdown_are_bounded_and_honest(kind: str, protocol: str) -> None:
    """force_flush(2 s) returns False within 2.5 s, shutdown(3 s) within 3.5 s; stderr: one line per signal that
    failed and one summary, none of the SDK's per-attempt lines."""
    with dead_endpoint(kind) as port:
        result = run_program(BOUNDED, endpoint_env(protocol, port), timeout=60)
    assert result.returncode == 0, result.stderr
    figures = result.last_json()
    assert figures["flushed"] is False
    assert figures["work"] < 1.0, figures
    assert figures["flush"] < 2.5, figures
    assert figures["shutdown"] < 3.5, figures

    ours = [
        line
        for line in result.stderr.splitlines()
        if line.startswith(("WARNING:otel_vision:", "WARNING:otel_vision.export:"))
    ]
    failures = [line for line in ours if "cannot export" in line]
    assert {("traces" in f, "metrics" in f, "logs" in f).index(True) for f in failures} <= {0, 1, 2}
    # A collector that hangs makes no attempt fail within the test: then only the summary speaks.
    assert len(failures) <= 3 and (failures or kind == "blackhole"), result.stderr
    summary = [line for line in ours if "not delivered" in line]
    assert len(summary) == 1 and "300 spans" in summary[0], result.stderr
    assert "opentelemetry" not in result.stderr.replace("otel_vision", ""), result.stderr
    assert len(result.stderr.splitlines()) <= 3 + len(failures) + 1, result.stderr


EXIT_WITHOUT_SHUTDOWN = """
import time, otel_vision
otel_vision.configure(service_name="exit", gpu=False)
for _ in range(50):
    with otel_vision.stage("work"):
        pass
print(time.time(), flush=True)
"""


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("kind", ["closed", "blackhole"])
def test_program_exits_promptly_without_shutdown(kind: str, protocol: str) -> None:
    """A program that never calls shutdown() ends within the exit bound (default 2 s, documented at most 3 s)
    after its last line, whatever the collector does."""
    with dead_endpoint(kind) as port:
        result = run_program(EXIT_WITHOUT_SHUTDOWN, endpoint_env(protocol, port), timeout=60)
    assert result.returncode == 0, result.stderr
    last_line = float(result.stdout.strip().splitlines()[-1])
    assert result.ended - last_line < 3.5, result.ended - last_line


def test_exit_bound_is_configurable() -> None:
    """OTEL_VISION_EXIT_TIMEOUT=0.2 makes a program with a hung collector exit almost at once."""
    with dead_endpoint("blackhole") as port:
        result = run_program(
            EXIT_WITHOUT_SHUTDOWN, endpoint_env("grpc", port, OTEL_VISION_EXIT_TIMEOUT="0.2"), timeout=60
        )
    assert result.returncode == 0, result.stderr
    assert result.ended - float(result.stdout.strip().splitlines()[-1]) < 1.5


def test_flush_is_true_when_everything_arrived(tmp_path: Path) -> None:
    """With a live collector force_flush() returns True and the collector has every span."""
    rotel = Rotel(tmp_path, verbosity="basic")
    try:
        result = run_program(
            BOUNDED.replace("shutdown(timeout=3)", "shutdown(timeout=10)"), endpoint_env("grpc", rotel.grpc_port)
        )
        assert result.returncode == 0, result.stderr
        assert result.last_json()["flushed"] is True
        assert rotel.received("spans") == 300
        assert "not delivered" not in result.stderr and "cannot export" not in result.stderr
    finally:
        rotel.stop()


STEADY = """
import time, otel_vision
otel_vision.configure(service_name="steady", gpu=False)
end = time.monotonic() + 40
while time.monotonic() < end:
    with otel_vision.stage("tick"):
        pass
    time.sleep(0.05)
"""


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_spans_flow_again_within_3s_of_a_collector_restart(tmp_path: Path, protocol: str) -> None:
    """Kill the collector for 5 s while spans keep coming; after it is back on the same port, spans arrive again
    within 3 s (the issue's bound), counted from when the port accepts connections again."""
    first = Rotel(tmp_path, "first", verbosity="basic")
    ports = (first.grpc_port, first.http_port)
    port = ports[0] if protocol == "grpc" else ports[1]
    second = None
    try:
        with started_program(STEADY, endpoint_env(protocol, port), tmp_path):
            deadline = time.monotonic() + 20
            while first.received("spans") == 0:
                assert time.monotonic() < deadline, "no span before the outage"
                time.sleep(0.1)
            first.stop()
            time.sleep(5)
            second = Rotel(tmp_path, "second", verbosity="basic", ports=ports)
            _wait_port(port)
            back = time.monotonic()
            while second.received("spans") == 0:
                assert time.monotonic() - back < 10, "no span within 10 s of the restart"
                time.sleep(0.05)
            recovery = time.monotonic() - back
        assert recovery < 3.0, recovery
    finally:
        if second is not None:
            second.stop()
        if first.process.poll() is None:
            first.stop()


BURST = """
import asyncio, json, os, threading, otel_vision
handle = otel_vision.configure(service_name="burst", gpu=False)
if os.environ["BURST_WHEN"] == "after-ready":
    handle.wait_ready()

def worker():
    for _ in range(300):
        with otel_vision.request("frame"):
            with otel_vision.stage("preprocess"):
                pass
            with otel_vision.stage("inference"):
                pass

async def task():
    for _ in range(10):
        with otel_vision.request("edit"):
            with otel_vision.stage("denoise"):
                await asyncio.sleep(0)
            with otel_vision.stage("decode"):
                pass

async def tasks():
    await asyncio.gather(*(task() for _ in range(200)))

threads = [threading.Thread(target=worker) for _ in range(16)]
for t in threads:
    t.start()
asyncio.run(tasks())
for t in threads:
    t.join()
ok = handle.force_flush(timeout_millis=60000)
stats = handle.delivery()["traces"]
handle.shutdown(timeout=10)
print(json.dumps({"flushed": ok, "delivered": stats.delivered, "lost": stats.lost}))
"""


@pytest.mark.parametrize("when", ["right-after-configure", "after-ready"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_burst_of_threads_and_tasks_loses_nothing(tmp_path: Path, protocol: str, when: str) -> None:
    """16 threads and 200 asyncio tasks of nested stages (20,400 spans in about a second) all reach the collector
    with the default queue: right after configure() returns (while its background part still loads; the first spans
    are held, then exported first) and once the pipeline is complete (the export thread keeps up with the rest)."""
    rotel = Rotel(tmp_path, verbosity="basic")
    try:
        port = rotel.grpc_port if protocol == "grpc" else rotel.http_port
        result = run_program(BURST, {**endpoint_env(protocol, port), "BURST_WHEN": when}, timeout=180)
        assert result.returncode == 0, result.stderr
        figures = result.last_json()
        expected = 16 * 300 * 3 + 200 * 10 * 3
        assert figures == {"flushed": True, "delivered": expected, "lost": 0}
        deadline = time.monotonic() + 20
        while rotel.received("spans") < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rotel.received("spans") == expected
    finally:
        rotel.stop()


HUGE_MESSAGES = """
import json, otel_vision
handle = otel_vision.configure(service_name="huge", gpu=False)
message = "x" * 5_000_000
for i in range(1001):
    try:
        with otel_vision.stage("fails"):
            raise ValueError(message if i % 2 == 0 else "small")
    except ValueError:
        pass
ok = handle.force_flush(timeout_millis=60000)
handle.shutdown(timeout=10)
print(json.dumps({"flushed": ok}))
"""


def test_multi_megabyte_exception_messages_do_not_lose_spans(tmp_path: Path) -> None:
    """1,001 failing stages, half with a 5 MB message, over gRPC to a collector with the usual 4 MiB limit: every
    span arrives (messages and status descriptions are capped, batches are cut below 4 MiB)."""
    rotel = Rotel(
        tmp_path, verbosity="basic", extra=("--exporter", "blackhole", "--otlp-grpc-max-recv-msg-size-mib", "4")
    )
    try:
        result = run_program(HUGE_MESSAGES, endpoint_env("grpc", rotel.grpc_port), timeout=180)
        assert result.returncode == 0, result.stderr
        assert result.last_json() == {"flushed": True}
        assert rotel.received("spans") == 1001
    finally:
        rotel.stop()


def test_credentials_never_reach_the_output() -> None:
    """An endpoint with user:password@ and a secret header: neither the password nor the header value appears in
    anything printed, while the failure itself is reported."""
    with dead_endpoint("closed") as port:
        result = run_program(
            BOUNDED,
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://scott:tiger-secret@127.0.0.1:{port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20header-secret",
            },
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert "cannot export" in result.stderr
    output = result.stdout + result.stderr
    assert "tiger-secret" not in output and "header-secret" not in output, output


def test_demo_reports_what_was_lost_when_the_collector_is_down() -> None:
    """`otel-vision demo` with an endpoint where nothing listens says, per signal, that nothing was delivered and
    what was lost, instead of claiming an export."""
    with dead_endpoint("closed") as port:
        result = run_program(
            "import sys; from otel_vision.cli import main; sys.exit(main(['demo', '--images', '1', '--size', '64']))",
            endpoint_env("grpc", port, OTEL_EXPORTER_OTLP_TIMEOUT="1"),
            timeout=300,
        )
    assert result.returncode == 0, result.stderr
    assert "traces: 0 spans delivered" in result.stdout and "lost" in result.stdout, result.stdout
    assert "exported over OTLP" not in result.stdout


IDLE_PROGRAM = """
import json, logging, threading, time, otel_vision
otel_vision.configure(service_name="idle", gpu=False)
with otel_vision.stage("before-idle"):
    logging.getLogger("app").warning("work done")
time.sleep(2.0)  # past a second with nothing to do: every thread of ours may sleep


def wake_ups():
    # How many times Linux put our threads back to work (voluntary context switches), in all.
    total = 0
    for thread in threading.enumerate():
        if thread.name.startswith("otel-vision"):
            with open(f"/proc/self/task/{thread.native_id}/status") as status:
                total += int(next(l for l in status if l.startswith("voluntary_ctxt_switches")).split()[1])
    return total


before = wake_ups()
time.sleep(3.0)
idle = wake_ups() - before
with otel_vision.stage("after-idle"):
    pass
with open({report!r}, "w") as out:
    json.dump({"wake_ups": idle, "ended": time.time()}, out)
time.sleep(30)  # ended by the test: only the export path delivers the span meanwhile, no flush, no exit
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts wake-ups from Linux's /proc")
def test_an_idle_process_sleeps_and_a_span_after_the_idle_time_arrives_within_the_schedule_delay(
    tmp_path: Path,
) -> None:
    """Three idle seconds cost our threads (span hand-over, duration metrics, batch members, export queues) a few
    wake-ups in all, as Linux counts them; they used to poll 24 times a second. The next span still reaches the
    collector without any flush, about one schedule delay (1 s) after it ended."""
    rotel = Rotel(tmp_path)
    report = tmp_path / "idle.json"
    try:
        program = IDLE_PROGRAM.replace("{report!r}", repr(str(report)))
        with started_program(program, endpoint_env("http/protobuf", rotel.http_port), tmp_path) as err:
            deadline = time.monotonic() + 60
            while not report.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert report.exists(), err.read_text()
            time.sleep(0.05)
            found = json.loads(report.read_text())
            while "Name           : after-idle" not in rotel.text() and time.monotonic() < deadline:
                time.sleep(0.02)
            arrived = time.time()
        assert "Name           : after-idle" in rotel.text(), err.read_text()
        assert found["wake_ups"] <= 6, found
        assert arrived - found["ended"] < 3.0, arrived - found["ended"]
    finally:
        rotel.stop()


SHUTDOWN_IN_A_SIGNAL_HANDLER = """
import json, os, signal, sys, time, otel_vision
handle = otel_vision.configure(service_name="handler", gpu=False)
handle.wait_ready(30)
with otel_vision.stage("before-signal"):
    pass
started = time.monotonic()
fired = []

def inside(frame, *places):  # (part of a file's path, function name or "")
    while frame is not None:
        path = frame.f_code.co_filename.replace(os.sep, "/")
        if any(part in path and function in ("", frame.f_code.co_name) for part, function in places):
            return True
        frame = frame.f_back
    return False

def on_alarm(signum, frame):
    # A handler that shuts telemetry down and exits (the usual SIGTERM handler), run while the main thread is in
    # force_flush(): inside a drain or the SDK's metric code if that ever happens on it, else anywhere in the flush.
    if not inside(frame, ("otel_vision/_setup.py", "force_flush")):
        return
    wanted = inside(frame, ("otel_vision/_finished.py", "drain"), ("opentelemetry/sdk/metrics", ""))
    if not wanted and time.monotonic() - started < 3:
        return
    signal.setitimer(signal.ITIMER_REAL, 0)
    fired.append(wanted)
    otel_vision.shutdown(5)
    print(json.dumps({"handler_done": True, "inside_a_lock": wanted}), flush=True)
    sys.exit(0)

signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
while time.monotonic() - started < 20:
    for _ in range(2000):
        with otel_vision.stage("main-work"):
            pass
    handle.force_flush(2000)
print(json.dumps({"handler_done": False}), flush=True)
"""


def test_shutdown_in_a_signal_handler_that_interrupts_a_flush_returns(tmp_path: Path) -> None:
    """A signal handler calling `otel_vision.shutdown()` then exiting, while the main thread is inside `force_flush()`
    (where it used to hold a drain's lock and the SDK's metric locks, which the handler's shutdown then waited for
    forever): the shutdown completes, the program exits 0, and what was recorded before reaches rotel."""
    rotel = Rotel(tmp_path)
    try:
        result = run_program(SHUTDOWN_IN_A_SIGNAL_HANDLER, endpoint_env("grpc", rotel.grpc_port), timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.last_json()["handler_done"] is True, result.stdout
        deadline = time.monotonic() + 10
        while "before-signal" not in rotel.text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "Name           : before-signal" in rotel.text()
    finally:
        rotel.stop()


RAISING_LOG_HANDLER = (
    """
import logging

class Broken(logging.Handler):  # the application's handler on the root logger; its emit always raises
    def emit(self, record):
        raise RuntimeError("the application's handler broke")

logging.getLogger().addHandler(Broken())
"""
    + STEADY
)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_log_handler_that_raises_does_not_stop_the_export(tmp_path: Path, protocol: str) -> None:
    """The application's root handler raises on every record. Our lines about the collector being down go through it
    too: they must cost only those lines, not our export threads. Once the collector is up, spans arrive, and no
    thread of ours died on stderr."""
    ports = (_free_port(), _free_port())
    port = ports[0] if protocol == "grpc" else ports[1]
    rotel = None
    try:
        with started_program(RAISING_LOG_HANDLER, endpoint_env(protocol, port), tmp_path) as err:
            time.sleep(3)  # exports fail meanwhile (nothing listens), and we log that
            rotel = Rotel(tmp_path, verbosity="basic", ports=ports)
            deadline = time.monotonic() + 15
            while rotel.received("spans") == 0:
                assert time.monotonic() < deadline, f"no span after the collector came up; stderr:\n{err.read_text()}"
                time.sleep(0.1)
            assert "Exception in thread" not in err.read_text(), err.read_text()
    finally:
        if rotel is not None:
            rotel.stop()
