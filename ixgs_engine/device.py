"""Choosing the compute device from a user's ``device`` (auto, cpu or cuda), and the host memory
a job may use (checked before long work, so a too-large job is refused with the numbers
instead of dying with a MemoryError at the end)."""

from __future__ import annotations

import os

import torch

from ixgs_engine.errors import IXGSError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when PyTorch sees a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise IXGSError("`device` cuda was asked for but PyTorch sees no CUDA GPU; use `device` cpu or auto")
    return torch.device(name)


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get now (Linux ``MemAvailable``, else the physical
    memory); None where neither is known."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(need: int, what: str, fix: str) -> None:
    """Refuse (IXGSError with the numbers) when ``what`` needs more than the available memory."""
    have = available_memory()
    if have is not None and need > have:
        raise IXGSError(
            f"{what} would need about {need / 2**30:.1f} GiB of memory, but {have / 2**30:.1f} GiB is available; {fix}"
        )
