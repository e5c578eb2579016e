"""What machine a figure came from, and how much memory a step took at its peak."""

from __future__ import annotations

import gc
import importlib.metadata
import logging
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

LOG = logging.getLogger(__name__)

PROC_STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform's answer elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def machine_facts() -> dict:
    """CPU, cores, memory, GPU, library versions and the time: the stamp on every result."""
    import cv2
    import faiss
    import torch

    from twice.model.embedder import VNNI_FLAGS, cpu_flags, cpu_has_fast_bf16

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": memory_total_gib(),
        "gpu": gpu_name(),
        "fast_bf16": cpu_has_fast_bf16(),
        "vnni": bool(VNNI_FLAGS & cpu_flags()),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": getattr(faiss, "__version__", "?"),
        # Verification's keypoints and fits differ between OpenCV versions: a report bench
        # family came out whole under one and not the other, with the same code.
        "opencv": cv2.__version__,
        "onnxruntime": _version("onnxruntime"),
        "platform": platform.platform(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _version(package: str) -> str | None:
    """An installed package's version (None: not installed)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _status_kib(field: str) -> int | None:
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class MemoryProbe:
    """Peak resident memory of one step, as growth over the RSS when the step began.

    Linux resets the process's high-water mark (VmHWM) when "5" is written to clear_refs, so
    each step gets its own peak without a child process. Elsewhere the probe reports None.
    """

    def __init__(self) -> None:
        self.start_kib: int | None = None
        self.peak_mib: float | None = None

    def __enter__(self) -> MemoryProbe:
        # Garbage freed during the step would lower the RSS under the reset high-water mark and
        # hide the step's own allocations (a test saw a 64 MiB block measured as 0): free it first.
        gc.collect()
        try:
            CLEAR_REFS.write_text("5")
            self.start_kib = _status_kib("VmRSS")
        except OSError:
            LOG.debug("cannot reset the RSS high-water mark: no peak memory figures")
        return self

    def __exit__(self, *exc) -> None:
        peak = _status_kib("VmHWM")
        if self.start_kib is not None and peak is not None:
            self.peak_mib = round(max(0, peak - self.start_kib) / 1024, 1)
