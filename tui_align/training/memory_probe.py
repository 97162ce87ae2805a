"""How much memory the device has free, and how much a run has used at its peak.

Free: CUDA's own count (torch.cuda.mem_get_info, in the training child), or the RAM the kernel says is
available (MemAvailable: free plus what the page cache would give back). Peak: CUDA's high-water mark
of allocated bytes, or the process's peak resident set. Torch is imported only for a CUDA device, so
the Train screen reads the CPU's numbers (and a GPU's through nvidia-smi) without it.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
from pathlib import Path


def available_ram() -> int | None:
    """Bytes of RAM a new allocation can have without swapping; None where it can't be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # macOS and the rest: psutil where it is installed
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def free_bytes(device: str) -> int | None:
    """Free bytes on `device` ("cuda" or "cpu") as the training child sees it."""
    if device == "cuda":
        import torch

        return int(torch.cuda.mem_get_info()[0])
    return available_ram()


def gpu_free_without_torch(timeout_s: float = 3.0) -> int | None:
    """The first GPU's free bytes from nvidia-smi, for a process that must not import torch; None without one."""
    program = shutil.which("nvidia-smi")
    if program is None:
        return None
    try:
        out = subprocess.run([program, "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=timeout_s, check=True).stdout
        return int(out.split()[0]) * 1024 * 1024  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def peak_bytes(device: str) -> int:
    """The run's peak so far: CUDA's max allocated, or this process's peak resident memory."""
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS counts bytes, Linux KiB
