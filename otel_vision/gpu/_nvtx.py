"""NVTX ranges mirroring otel_vision's spans, so an Nsight Systems capture shows our stage names over the kernels."""

from __future__ import annotations

import sys
from typing import Any

from otel_vision._errors import report_internal_error


class NvtxRanges:
    """Starts and ends one NVTX range per span (``range_start``/``range_end``: safe across generators and threads).

    Binds to ``torch.cuda.nvtx`` once the application has imported torch; before that, and if NVTX fails, it does
    nothing. NVTX calls are cheap when no profiler is attached.
    """

    def __init__(self) -> None:
        self._nvtx: Any = None
        self._broken = False

    def start(self, name: str) -> int | None:
        if self._broken:
            return None
        nvtx = self._nvtx
        if nvtx is None:
            torch = sys.modules.get("torch")
            if torch is None:
                return None
            nvtx = self._nvtx = torch.cuda.nvtx
        try:
            return int(nvtx.range_start(name))
        except Exception:
            self._broken = True
            report_internal_error("NVTX range")
            return None

    def end(self, handle: int) -> None:
        try:
            self._nvtx.range_end(handle)
        except Exception:
            self._broken = True
            report_internal_error("NVTX range")
