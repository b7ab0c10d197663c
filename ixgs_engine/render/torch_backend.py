"""The ``torch`` render backend, the reference: the shared splat stage (``renderer.py``) summed by
the chunked PyTorch windows (``torch_windows.py``). It runs wherever PyTorch does, with autograd,
and is what the fast kernels are checked against."""

from __future__ import annotations

from ixgs_engine.render.renderer import SplatRenderer
from ixgs_engine.render.torch_windows import TorchAccumulator


class TorchBackend(SplatRenderer):
    """The splat stage with :class:`TorchAccumulator`, on the device of its inputs
    (``chunk_elements``: window samples per chunk, None for the device's default)."""

    def __init__(self, chunk_elements: int | None = None) -> None:
        super().__init__(TorchAccumulator(chunk_elements), chunk_elements)
