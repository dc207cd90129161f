"""Validate every shipped collector configuration with the real collector, in the pinned Docker image.

CI has no Docker and no collector binary, so the test suite checks the configurations statically
(check_collector_config.py and tests/collector). Before a release, or after changing a configuration, run this where
Docker is available:

    python collector/tools/validate_with_docker.py            # every configuration, pinned image
    python collector/tools/validate_with_docker.py --list     # only print what would be validated
    python collector/tools/validate_with_docker.py --image otel/opentelemetry-collector-contrib:0.160.0

Each run is ``otelcol-contrib validate --config=...`` (one or more files merged, as deployed) with placeholder values
for the variables the configuration reads without a default, the way the manifests set them. It exits 1 when any
validation fails and prints the collector's own message.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

COLLECTOR = Path(__file__).resolve().parent.parent
IMAGE = "otel/opentelemetry-collector-contrib:0.159.0"
"""The image every manifest pins (tests/collector checks they agree)."""

# The values the manifests give to the variables read without a default (any syntactically valid value will do).
PLACEHOLDERS = {
    "MY_POD_IP": "127.0.0.1",
    "OTEL_VISION_TRACES_HOST": "otel-vision-gateway.observability.svc.cluster.local",
    "OTEL_VISION_TRACES_BACKEND": "tempo.tracing.svc.cluster.local:4317",
    "OTEL_VISION_LOKI_ENDPOINT": "http://loki-gateway.monitoring.svc.cluster.local/otlp",
    "OTEL_VISION_PROMETHEUS_ENDPOINT": "http://prometheus-operated.monitoring.svc.cluster.local:9090/api/v1/otlp",
    "OTEL_VISION_PROMETHEUS_REMOTE_WRITE_ENDPOINT": "http://prometheus.monitoring.svc:9090/api/v1/write",
    "OTEL_VISION_EXPORT_AUTHORIZATION": "Bearer placeholder",
}

SIDECAR = "sidecar/otelcol.yaml"
REMOTE_WRITE = "sidecar/prometheus-remote-write.yaml"
SIDECAR_AUTHORIZATION = "sidecar/export-authorization.yaml"
GATEWAY = "gateway/otelcol.yaml"
GATEWAY_AUTHORIZATION = "gateway/export-authorization.yaml"

# Every combination a deployment uses: the files given to --config, in order.
COMBINATIONS: dict[str, tuple[str, ...]] = {
    "sidecar": (SIDECAR,),
    "sidecar + remote write": (SIDECAR, REMOTE_WRITE),
    "sidecar + authorization": (SIDECAR, SIDECAR_AUTHORIZATION),
    "sidecar + remote write + authorization": (SIDECAR, REMOTE_WRITE, SIDECAR_AUTHORIZATION),
    "gateway": (GATEWAY,),
    "gateway + authorization": (GATEWAY, GATEWAY_AUTHORIZATION),
}


def _embedded(workdir: Path) -> dict[str, tuple[str, ...]]:
    """The copies inside the Operator resource and the Helm values, written out as files (they must validate too,
    although tests/collector already proves them identical to their sources)."""
    operator = yaml.safe_load((COLLECTOR / "k8s" / "operator" / "opentelemetrycollector.yaml").read_text())
    helm = yaml.safe_load((COLLECTOR / "gateway" / "helm-values.yaml").read_text())
    written = {}
    for name, config in (
        ("operator-spec-config.yaml", operator["spec"]["config"]),
        ("helm-alternate-config.yaml", helm["alternateConfig"]),
    ):
        (workdir / name).write_text(yaml.safe_dump(config, sort_keys=False))
        written[f"embedded: {name}"] = (name,)
    return written


def validate(image: str, label: str, files: Sequence[str], mounts: dict[str, Path]) -> bool:
    command = ["docker", "run", "--rm"]
    for name, value in PLACEHOLDERS.items():
        command += ["-e", f"{name}={value}"]
    for target, source in mounts.items():
        command += ["-v", f"{source}:{target}:ro"]
    command += [image, "validate", *(f"--config=/conf/{Path(f).as_posix()}" for f in files)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    status = "ok" if result.returncode == 0 else "FAILED"
    print(f"{status:6} {label}: {' + '.join(files)}")
    if result.returncode != 0:
        print((result.stderr or result.stdout).strip(), file=sys.stderr)
    return result.returncode == 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run otelcol-contrib validate on every shipped configuration.")
    parser.add_argument("--image", default=IMAGE, help=f"collector image (default {IMAGE})")
    parser.add_argument("--list", action="store_true", help="print the combinations and exit")
    args = parser.parse_args(argv)
    if args.list:
        for label, files in COMBINATIONS.items():
            print(f"{label}: {' + '.join(files)}")
        print("embedded: the Operator resource's spec.config and the Helm values' alternateConfig")
        return 0
    if shutil.which("docker") is None:
        print("docker is not installed: this check needs Docker (CI validates statically instead)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        embedded = _embedded(workdir)
        ok = all(
            [validate(args.image, label, files, {"/conf": COLLECTOR}) for label, files in COMBINATIONS.items()]
            + [validate(args.image, label, files, {"/conf": workdir}) for label, files in embedded.items()]
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
