"""ultralytics' own tests, run plainly and then with otel_vision instrumenting every model; any difference fails.

```
python tests/peers/run_ultralytics.py [--workdir DIR] [--budget SECONDS]
```

1. Downloads the sdist of the *installed* ultralytics version from PyPI (``pip download --no-binary :all:``) and
   takes its ``tests/`` folder; nothing else is fetched.
2. Builds what those tests would download, offline and in code: random-weight checkpoints from the model YAMLs
   (``yolo26n*.pt``, ``yolo11n.pt``, ``yolov8n.pt``), and tiny synthetic datasets (``coco8``, ``coco8-seg``,
   ``coco8-pose``, ``dota8``, ``imagenet10``) from ultralytics' bundled images, in a fresh settings folder.
3. Runs the subset (`SELECT`, minus `DESELECT`) twice with ``peer_plugin``: once plainly, once with
   ``otel_vision.instrument_ultralytics()``; then compares every test's outcome and the hash of every ``Results`` it
   produced. Exit status 1 on any difference, 2 when the runs could not be made (a run past its budget included).

See docs/testing.md for what the subset is and why the rest cannot run offline.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

SELECT = ["tests/test_python.py", "tests/test_engine.py"]
"""The files run (test_cli.py runs the ``yolo`` command in subprocesses, out of the plugin's reach; test_exports.py,
test_solutions.py, test_integrations.py need export toolchains, downloaded videos or third-party services;
test_cuda.py and test_rocm.py need a GPU)."""
DESELECT_K = " and ".join(
    f"not {name}"
    for name in (
        # Training for an epoch or more (10-20 s each here): not what otel_vision instruments, and the predict and
        # val paths they end with are covered by the predict and test_val tests.
        "test_task",
        "test_grayscale",
        "test_multichannel",
        "test_yolov10",
        "test_train_pretrained",
        "test_workflow",
        "test_resume_incomplete",
        "test_distill",
        "test_nan_recovery",
        "test_checkpoint_",
        # Export toolchains (ONNX) are not installed.
        "test_export",
        # Spawned DataLoader workers, threaded checkpoint loading, profiling: slow here, no Results.
        "test_image_cache_shared_with_spawned_workers",
        "test_restricted_load_threaded",
        "test_model_profile",
    )
)
"""Deselected by name (``-k``): see docs/testing.md for why."""

BUILD_ASSETS = r"""
import random, shutil, sys
from pathlib import Path

import cv2
import numpy as np
from ultralytics import YOLO
from ultralytics.utils import ASSETS, SETTINGS

work = Path(sys.argv[1])
SETTINGS.update(
    weights_dir=str(work / "weights"), datasets_dir=str(work / "datasets"), runs_dir=str(work / "runs"), sync=False
)
weights = work / "weights"
(weights / "path with spaces").mkdir(parents=True, exist_ok=True)
made = []
for name in ("yolo26n", "yolo26n-seg", "yolo26n-cls", "yolo26n-pose", "yolo26n-obb", "yolo26n-sem", "yolo26n-depth",
             "yolo11n", "yolov8n"):
    try:
        model = YOLO(f"{name}.yaml")
        model.save(str(weights / f"{name}.pt"))
        made.append(name)
    except Exception as exc:  # a YAML this version does not ship: the tests that need it fail in both runs alike
        print(f"no checkpoint for {name}: {type(exc).__name__}: {exc}")
shutil.copy(weights / "yolo26n.pt", weights / "path with spaces" / "yolo26n.pt")

random.seed(0)
images = [cv2.resize(cv2.imread(str(ASSETS / n)), (320, 256)) for n in ("bus.jpg", "zidane.jpg")]


def box():
    w, h = random.uniform(0.1, 0.4), random.uniform(0.1, 0.4)
    return random.uniform(w / 2, 1 - w / 2), random.uniform(h / 2, 1 - h / 2), w, h


def label(kind):
    rows = []
    for _ in range(3):
        cx, cy, w, h = box()
        cls = random.randrange(80) if kind != "obb" else random.randrange(15)
        corners = [cx - w / 2, cy - h / 2, cx + w / 2, cy - h / 2, cx + w / 2, cy + h / 2, cx - w / 2, cy + h / 2]
        if kind == "detect":
            rows.append([cls, cx, cy, w, h])
        elif kind == "segment":
            rows.append([cls, *corners])
        elif kind == "obb":
            rows.append([cls, *corners])
        elif kind == "pose":
            kpts = []
            for _ in range(17):
                kpts += [random.uniform(cx - w / 2, cx + w / 2), random.uniform(cy - h / 2, cy + h / 2), 2]
            rows.append([0, cx, cy, w, h, *kpts])
    return "\n".join(" ".join(f"{v:.6f}" if isinstance(v, float) else str(v) for v in row) for row in rows) + "\n"


for folder, kind in (("coco8", "detect"), ("coco8-seg", "segment"), ("coco8-pose", "pose"), ("dota8", "obb")):
    root = work / "datasets" / folder
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            cv2.imwrite(str(root / "images" / split / f"{i:04d}.jpg"), images[i % 2])
            (root / "labels" / split / f"{i:04d}.txt").write_text(label(kind))
for split in ("train", "val"):
    for c, wnid in enumerate(("n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916",
                              "n03417042", "n03425413", "n03445777", "n03888257")):
        folder = work / "datasets" / "imagenet10" / split / wnid
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / "0.jpg"), images[c % 2])
print("checkpoints:", ", ".join(made))
"""


def _sdist_tests(version: str, work: Path, cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"ultralytics-{version}.tar.gz"
    if not archive.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
             f"ultralytics=={version}", "-d", str(cache)],
            check=True,
            timeout=300,
        )  # fmt: skip
    suite = work / "suite"
    prefix = f"ultralytics-{version}/tests/"
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
        for member in members:
            member.name = "tests/" + member.name[len(prefix) :]
        tar.extractall(suite, members=members, filter="data")
    return suite


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PYTEST_"))}
    env.update(
        YOLO_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        YOLO_CONFIG_DIR=str(work / "config"),
        PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"),
        MPLBACKEND="Agg",
    )
    return env


def _run(suite: Path, work: Path, instrument: bool, budget: float) -> tuple[dict[str, dict[str, object]], int, float]:
    report = work / ("instrumented.json" if instrument else "plain.json")
    env = _env(work)
    env["OTEL_VISION_PEER_REPORT"] = str(report)
    if instrument:
        env["OTEL_VISION_PEER_INSTRUMENT"] = "1"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "peer_plugin", "-p", "no:cacheprovider",
               "-p", "no:randomly", "-o", "addopts=", "-W", "ignore", "--tb=line", "-k", DESELECT_K, *SELECT]  # fmt: skip
    started = time.monotonic()
    log = work / ("instrumented.log" if instrument else "plain.log")
    with open(log, "w", encoding="utf-8") as out:
        subprocess.run(command, cwd=suite, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=budget, check=False)
    elapsed = time.monotonic() - started
    data = json.loads(report.read_text(encoding="utf-8"))
    return data["tests"], int(data["spans"]), elapsed


def compare(plain: dict[str, dict[str, object]], traced: dict[str, dict[str, object]]) -> list[str]:
    """Every difference between the two runs, one line each."""
    problems = []
    for nodeid in sorted(set(plain) | set(traced)):
        a, b = plain.get(nodeid), traced.get(nodeid)
        if a is None or b is None:
            problems.append(f"{nodeid}: ran only {'instrumented' if a is None else 'plainly'}")
        elif a["outcome"] != b["outcome"]:
            problems.append(f"{nodeid}: {a['outcome']} plainly, {b['outcome']} instrumented")
        elif a["hash"] != b["hash"]:
            problems.append(f"{nodeid}: Results differ (hash {a['hash']} plainly, {b['hash']} instrumented)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "otel-vision-peers")
    parser.add_argument("--budget", type=float, default=840.0, help="seconds for the whole job (default 840)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    version = importlib.metadata.version("ultralytics")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="otel-vision-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        suite = _sdist_tests(version, work, args.cache)
        subprocess.run(
            [sys.executable, "-c", textwrap.dedent(BUILD_ASSETS), str(work)],
            env=_env(work), cwd=work, check=True, timeout=300,
        )  # fmt: skip
        remaining = args.budget - (time.monotonic() - started)
        plain, _, plain_s = _run(suite, work, False, remaining / 2)
        traced, spans, traced_s = _run(suite, work, True, args.budget - (time.monotonic() - started))
    except (subprocess.SubprocessError, OSError, json.JSONDecodeError, KeyError) as exc:
        print(f"peer suite: could not run ultralytics {version}'s tests: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    counts: dict[str, int] = {}
    for entry in plain.values():
        counts[str(entry["outcome"])] = counts.get(str(entry["outcome"]), 0) + 1
    hashed = sum(1 for entry in plain.values() if entry["hash"])
    print(
        f"peer suite: ultralytics {version}, {len(plain)} tests "
        f"({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}); {hashed} produced Results, hashed; "
        f"plain run {plain_s:.0f} s, instrumented run {traced_s:.0f} s ({spans} spans recorded); "
        f"total {time.monotonic() - started:.0f} s"
    )
    if spans == 0:
        print("peer suite: the instrumented run recorded no span: instrumentation was not active", file=sys.stderr)
        return 1
    problems = compare(plain, traced)
    for line in problems:
        print(f"DIFFERENT {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
