"""Soak: a steady vision-service workload for minutes, against a healthy collector and a dead one.

Each scenario runs in its own interpreter: requests of three stages and a log line, at a fixed rate, for the given
minutes. Every minute it reports its RSS and what otel_vision counted as delivered and lost; for the healthy case the
collector (rotel, on 127.0.0.1) reports what it received. Memory must stay flat and, with a healthy collector, nothing
may be lost; with a dead one, losses are counted and memory still stays flat.

    python benchmarks/soak.py                      # 5 minutes per scenario, both at once, markdown on stdout
    python benchmarks/soak.py --minutes 1 --rate 100
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

WORKLOAD = """
import json, logging, os, sys, time, otel_vision
logging.basicConfig(level=logging.WARNING)
handle = otel_vision.configure(service_name="soak", gpu=False)
log = logging.getLogger("soak")
log.setLevel(logging.INFO)
minutes, rate = float(sys.argv[1]), float(sys.argv[2])

def rss_mib():
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

start = time.monotonic()
next_report = start + 60
requests = 0
while time.monotonic() - start < minutes * 60:
    with otel_vision.request("predict", attributes={"vision.model.name": "soak"}):
        for name in ("preprocess", "inference", "postprocess"):
            with otel_vision.stage(name):
                pass
        log.info("request %d done", requests)
    requests += 1
    time.sleep(max(0.0, start + requests / rate - time.monotonic()))
    if time.monotonic() >= next_report:
        next_report += 60
        stats = handle.delivery()
        print(json.dumps({
            "minute": round((time.monotonic() - start) / 60), "requests": requests, "rss_mib": round(rss_mib(), 1),
            **{f"{signal}_delivered": s.delivered for signal, s in stats.items()},
            **{f"{signal}_lost": s.lost for signal, s in stats.items()},
        }), flush=True)
handle.shutdown(timeout=5)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rotel(workdir: Path) -> tuple[subprocess.Popen[bytes], Path, int]:
    import rotel

    grpc, http = _free_port(), _free_port()
    out = workdir / "rotel.out"
    process = subprocess.Popen(
        [
            str(Path(rotel.__file__).parent / "rotel-agent"), "start", "--debug-log", "traces",
            "--debug-log-verbosity", "basic", "--otlp-grpc-endpoint", f"127.0.0.1:{grpc}",
            "--otlp-http-endpoint", f"127.0.0.1:{http}", "--exporter", "blackhole",
            "--pid-file", str(workdir / "rotel.pid"), "--log-file", str(workdir / "rotel.log"),
        ],
        stdout=out.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    time.sleep(1.0)
    return process, out, grpc


def _received(out: Path) -> int:
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.read_text(errors="replace"))
    return sum(int(n) for n in re.findall(r"\bspans=(\d+)", text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second (4 spans and a log each)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="otel-vision-soak-"))
    collector, out, port = _rotel(workdir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["NO_PROXY"] = "127.0.0.1"
    scenarios = {"healthy": port, "dead": _free_port()}
    runs = {}
    for name, target in scenarios.items():
        runs[name] = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(WORKLOAD), str(args.minutes), str(args.rate)],
            stdout=subprocess.PIPE, stderr=(workdir / f"{name}.err").open("w"), text=True,
            env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{target}"},
        )  # fmt: skip
    rows = {name: [json.loads(line) for line in run.stdout or []] for name, run in runs.items()}
    for run in runs.values():
        run.wait(120)
    time.sleep(2)
    received = _received(out)
    collector.terminate()
    collector.wait(10)

    print(f"Soak: {args.minutes:g} min per scenario at {args.rate:g} requests/s (4 spans and 1 log record each)\n")
    print("| scenario | minute | requests | RSS MiB | spans delivered | spans lost | logs delivered | logs lost |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, lines in rows.items():
        for row in lines:
            print(
                f"| {name} | {row['minute']} | {row['requests']} | {row['rss_mib']} | {row['traces_delivered']} | "
                f"{row['traces_lost']} | {row['logs_delivered']} | {row['logs_lost']} |"
            )
    print(f"\nrotel received {received} spans from the healthy run; stderr of each run is in {workdir}")


if __name__ == "__main__":
    main()
