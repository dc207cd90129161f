"""The example services' image: the Dockerfile passes hadolint, and the manifests run it with arguments it accepts."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.collector.support import COLLECTOR, ROOT, load_yaml_documents, require_tool

DOCKERFILE = ROOT / "examples" / "docker" / "Dockerfile"
REQUIREMENTS = ROOT / "examples" / "docker" / "requirements.txt"
APPLICATION_MANIFESTS = [
    COLLECTOR / "k8s" / "operator" / "deployment.yaml",
    COLLECTOR / "k8s" / "plain" / "deployment.yaml",
]


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("hadolint"), "--no-color", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def test_dockerfile_passes_hadolint() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("original", "broken", "rule"),
    [
        ("FROM python:${PYTHON_VERSION}-slim-bookworm AS build", "FROM python:latest AS build", "DL3007"),
        ("pip install -r examples/docker/requirements.txt", "pip install fastapi", "DL3013"),
        ("USER 10001", "USER root", "DL3002"),
    ],
    ids=["unpinned-base", "unpinned-package", "root-user"],
)
def test_hadolint_rejects_a_broken_copy(tmp_path: Path, original: str, broken: str, rule: str) -> None:
    text = DOCKERFILE.read_text()
    assert original in text
    copy = tmp_path / "Dockerfile"
    copy.write_text(text.replace(original, broken))
    result = hadolint(copy)
    assert result.returncode != 0 and rule in result.stdout, result.stdout


def _instruction(name: str) -> list[str]:
    (line,) = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith(f"{name} ")]
    return list(json.loads(line.removeprefix(f"{name} ")))


def _options(script: Path) -> set[str]:
    return set(re.findall(r'add_argument\(\s*"(--[a-z-]+)"', script.read_text()))


def test_image_entry_point_accepts_the_manifests_arguments() -> None:
    """The manifests pass only `args`: the entry point is the service, and it knows every option they give."""
    entrypoint = _instruction("ENTRYPOINT")
    assert entrypoint[0] == "python"
    script = ROOT / entrypoint[1]
    assert script.exists(), script
    accepted = _options(script)
    assert {option for option in _instruction("CMD") if option.startswith("--")} <= accepted
    for manifest in APPLICATION_MANIFESTS:
        (deployment,) = load_yaml_documents(manifest)
        (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "pix2pix"]
        assert "command" not in container, manifest
        given = {arg for arg in container["args"] if arg.startswith("--")}
        assert given <= accepted, (manifest.name, given - accepted)
        assert "examples/docker/Dockerfile" in manifest.read_text(), manifest


def test_image_is_documented_and_its_dependencies_pinned() -> None:
    assert "examples/docker/Dockerfile" in (COLLECTOR / "README.md").read_text()
    for line in REQUIREMENTS.read_text().splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.]+", line), line
    for source in re.findall(r"^COPY (?!--from)(\S+)", DOCKERFILE.read_text(), re.M):
        assert (ROOT / source).exists(), source
    # The torch pins match the ones CI installs.
    ci = (ROOT / ".ci" / "run").read_text()
    for pin in re.findall(r"torch(?:vision)?==[0-9.]+", DOCKERFILE.read_text()):
        assert pin in ci, pin
