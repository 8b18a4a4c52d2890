"""Peak memory of a process, as the round records carry it.

``peak_rss_bytes``: the largest resident set size the process has had (``resource.getrusage``'s ``ru_maxrss``),
which counts the frozen model, the agents' stacks, the optimizer states and Python itself. ``peak_cuda_bytes``:
the most memory torch's CUDA allocator has held for tensors on the run's GPU (``torch.cuda.max_memory_allocated``),
None on the CPU. Both are peaks since the process started, so a round's value is never below an earlier round's.
Across processes a record keeps the largest (:func:`max_over_processes`), as it does for the times.
"""

from __future__ import annotations

import sys
from typing import Iterable, Optional

MEMORY = ("peak_rss_bytes", "peak_cuda_bytes")
"""The keys :func:`peak_memory` returns (bytes, or None where not measured)."""


def peak_rss_bytes() -> Optional[int]:
    """The process's peak resident set size in bytes, or None where ``resource`` does not exist (Windows)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in bytes on macOS and in kilobytes on Linux and the BSDs
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def peak_memory(device=None) -> dict:
    """``{"peak_rss_bytes": ..., "peak_cuda_bytes": ...}`` of this process; the CUDA peak for a CUDA ``device``
    (a ``torch.device`` or its name), else None."""
    out = {"peak_rss_bytes": peak_rss_bytes(), "peak_cuda_bytes": None}
    if device is not None and str(device).startswith("cuda"):
        import torch

        out["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


def max_over_processes(parts: Iterable[dict]) -> dict:
    """The largest of each :data:`MEMORY` value over the processes' parts (None where no process measured it)."""
    parts = list(parts)
    out = {}
    for key in MEMORY:
        values = [p[key] for p in parts if p.get(key) is not None]
        out[key] = max(values) if values else None
    return out
