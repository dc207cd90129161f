"""Start-up cost: `import otel_vision` against the SDK's tracer import, and `configure()` with OTLP/gRPC and HTTP.

Each sample is a fresh interpreter (imports are only ever paid once per process); the variants alternate in a
shuffled order every round and the medians are reported. Byte-code caches are written first and kept, as in an
installed package (``PYTHONDONTWRITEBYTECODE`` is removed from the children's environment). `configure()` is timed
on the calling thread: the metrics and logs SDKs, the exporters and gRPC load on its background thread afterwards,
and the time until that thread is done ("ready") is reported beside it.

    python benchmarks/bench_startup.py --rounds 30
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SDK_IMPORT = """
import json, time
t = time.perf_counter()
import opentelemetry.sdk.trace
print(json.dumps({"import": time.perf_counter() - t}))
"""

OUR_IMPORT = """
import json, time
t = time.perf_counter()
import otel_vision
print(json.dumps({"import": time.perf_counter() - t}))
"""

CONFIGURE = """
import json, time
t = time.perf_counter()
import otel_vision
imported = time.perf_counter() - t
t = time.perf_counter()
handle = otel_vision.configure(service_name="bench-startup")
configured = time.perf_counter() - t
t = time.perf_counter()
getattr(handle, "wait_ready", lambda timeout: True)(30)  # the code before the background set-up had none
ready = time.perf_counter() - t + configured
with otel_vision.stage("first"):
    pass
handle.shutdown(timeout=1)
print(json.dumps({"import": imported, "configure": configured, "ready": ready}))
"""


def run(code: str, env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    compileall.compile_dir(str(ROOT / "otel_vision"), quiet=1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_stage import start_rotel

    collector, grpc_port, http_port = start_rotel()
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE" and not k.startswith("OTEL_")}
    variants = {
        "sdk_import": (SDK_IMPORT, base),
        "import": (OUR_IMPORT, base),
        "grpc": (CONFIGURE, {**base, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{grpc_port}"}),
        "http": (
            CONFIGURE,
            {
                **base,
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{http_port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            },
        ),
    }
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    order = list(variants)
    shuffle = random.Random(0).shuffle
    try:
        for index in range(args.rounds + 1):
            shuffle(order)
            for name in order:
                code, env = variants[name]
                result = run(code, env)
                if index:
                    samples[name].append(result)
    finally:
        collector.terminate()
        collector.wait(10)

    def median(name: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[name]) * 1e3

    sdk = median("sdk_import", "import")
    ours = median("import", "import")
    print(f"Start-up, medians of {args.rounds} fresh interpreters per variant (Python {sys.version.split()[0]})")
    print("| measure | ms | reference | budget |")
    print("|---|---:|---|---|")
    print(f"| `import opentelemetry.sdk.trace` | {sdk:.1f} | the reference | — |")
    print(f"| `import otel_vision` | {ours:.1f} | {ours / sdk:.2f}× the SDK import | ≤ 1.2× |")
    for name, label, budget in (("grpc", "OTLP/gRPC", 25), ("http", "OTLP/HTTP", 15)):
        print(
            f"| `configure()`, {label}, on the calling thread | {median(name, 'configure'):.1f} | "
            f"pipeline complete {median(name, 'ready'):.1f} ms after the call began (background) | ≤ {budget} ms |"
        )


if __name__ == "__main__":
    main()
