"""Copy the collector configurations into the files that embed them, so each has exactly one source.

- collector/sidecar/otelcol.yaml -> the Operator's OpenTelemetryCollector (spec.config) and the plain ConfigMap;
- collector/sidecar/prometheus-remote-write.yaml -> the plain ConfigMap (for the remote-write fallback);
- collector/{sidecar,gateway}/export-authorization.yaml -> the plain and gateway ConfigMaps (optional second config);
- collector/gateway/otelcol.yaml -> the gateway ConfigMap and the Helm values (alternateConfig);
- the sha256 of each ConfigMap's sources -> the ``checksum/config`` pod annotation of the Deployment mounting it,
  so that `kubectl apply` rolls the pods when the configuration changes.

In each target the copy sits between a ``# >>> <source>`` line and a ``# <<< <source>`` line, indented like them.

    python collector/tools/sync.py           # rewrite the targets
    python collector/tools/sync.py --check   # exit 1 and name the stale targets (used by the test suite)
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

COLLECTOR = Path(__file__).resolve().parent.parent
ROOT = COLLECTOR.parent

SIDECAR = "collector/sidecar/otelcol.yaml"
REMOTE_WRITE = "collector/sidecar/prometheus-remote-write.yaml"
GATEWAY = "collector/gateway/otelcol.yaml"
SIDECAR_AUTHORIZATION = "collector/sidecar/export-authorization.yaml"
GATEWAY_AUTHORIZATION = "collector/gateway/export-authorization.yaml"

EMBEDDED: dict[str, tuple[str, ...]] = {
    "collector/k8s/operator/opentelemetrycollector.yaml": (SIDECAR,),
    "collector/k8s/plain/configmap.yaml": (SIDECAR, REMOTE_WRITE, SIDECAR_AUTHORIZATION),
    "collector/k8s/gateway/configmap.yaml": (GATEWAY, GATEWAY_AUTHORIZATION),
    "collector/gateway/helm-values.yaml": (GATEWAY,),
}
CHECKSUMS: dict[str, tuple[str, ...]] = {
    "collector/k8s/plain/deployment.yaml": (SIDECAR, REMOTE_WRITE, SIDECAR_AUTHORIZATION),
    "collector/k8s/gateway/deployment.yaml": (GATEWAY, GATEWAY_AUTHORIZATION),
}
_CHECKSUM = re.compile(r'^(?P<indent>\s*)checksum/config: "sha256:[0-9a-f]*"$', re.MULTILINE)


def _source(relative: str) -> str:
    return (ROOT / relative).read_text()


def embed(text: str, source: str, content: str) -> str:
    """Replace the lines between ``# >>> source`` and ``# <<< source`` by ``content``, indented like the markers."""
    pattern = re.compile(
        rf"^(?P<indent>[ ]*)# >>> {re.escape(source)}[^\n]*\n.*?^(?P=indent)# <<< {re.escape(source)}\n",
        re.MULTILINE | re.DOTALL,
    )
    match = pattern.search(text)
    if match is None:
        raise ValueError(f"no '# >>> {source}' ... '# <<< {source}' block")
    indent = match.group("indent")
    body = "".join(f"{indent}{line}".rstrip() + "\n" for line in content.splitlines())
    block = (
        f"{indent}# >>> {source} (copied by collector/tools/sync.py: edit the source, not this copy)\n"
        f"{body}{indent}# <<< {source}\n"
    )
    return text[: match.start()] + block + text[match.end() :]


def checksum(sources: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for source in sources:
        digest.update(_source(source).encode())
    return digest.hexdigest()


def render(target: str) -> str:
    """The up-to-date text of one target file."""
    text = _source(target)
    for source in EMBEDDED.get(target, ()):
        text = embed(text, source, _source(source))
    if target in CHECKSUMS:
        value = checksum(CHECKSUMS[target])
        text, count = _CHECKSUM.subn(lambda m: f'{m.group("indent")}checksum/config: "sha256:{value}"', text)
        if count != 1:
            raise ValueError(f"{target}: expected one checksum/config annotation, found {count}")
    return text


def stale() -> list[str]:
    """Targets whose text differs from what `render` produces."""
    return [target for target in sorted({*EMBEDDED, *CHECKSUMS}) if render(target) != _source(target)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Copy collector configurations into the files embedding them.")
    parser.add_argument("--check", action="store_true", help="only report stale targets")
    args = parser.parse_args(argv)
    outdated = stale()
    if args.check:
        for target in outdated:
            print(f"stale: {target} (run python collector/tools/sync.py)", file=sys.stderr)
        return 1 if outdated else 0
    for target in outdated:
        (ROOT / target).write_text(render(target))
        print(f"updated {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
