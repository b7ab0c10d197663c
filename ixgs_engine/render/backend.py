"""The render contract: what every backend computes and how backends are found.

All inputs live in the normalized scene ([-1, 1]^3, see ``geometry/normalization.py``):
Gaussian means (N, 3), covariances (N, 3, 3), densities (N,) (peak values per normalized
length unit), projection matrices (V, 3, 4) acting on normalized points, and voxel grids
whose origin/spacing/direction are in normalized units.

Both operations use the same kernel ``G_i(x) = rho_i exp(-1/2 (x - p_i)^T Sigma_i^-1 (x - p_i))``,
cut where it is negligible: footprints at Mahalanobis distance 3 on the detector, voxels at the
3-D radius that drops the same share of the mass (about 3.33), so images and volumes agree:

- ``render``: pixel value = plain sum over Gaussians of their line integrals along the pixel's
  ray, splatted: ``rho mu exp(-1/2 (u - u_i)^T Sigma2d_i^-1 (u - u_i))`` (no alpha compositing,
  no low-pass dilation). ``screen_offsets`` (V, N, 2), pixels, is added to the projected
  centres: pass zeros with ``requires_grad`` to read the view-space positional gradient
  that densification needs.
- ``voxelize``: ``sum_i G_i`` at the voxel centres of a grid.

``support`` (half-sizes of a box centred at the origin, normally the ROI's) parts space at the
box's faces: a Gaussian centred in the box exists only inside it, the others only outside
it. So a model can hold a sharp step at a face (a specimen's tissue ending there, or the ROI
cut out of a patient) without its tails crossing it. ``render`` scales each Gaussian's
line integral by the share of its central ray's 1-D profile on its side of the box;
``voxelize`` sums the Gaussians centred in the box at the voxels in it and the others at
the voxels outside it.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import torch

from ixgs_engine.errors import IXGSError
from ixgs_engine.volume import VolumeGrid


@runtime_checkable
class RenderBackend(Protocol):
    """Additive X-ray splatting and voxelization of radiative Gaussians (differentiable)."""

    name: str

    def render(
        self,
        means: torch.Tensor,
        covariances: torch.Tensor,
        densities: torch.Tensor,
        matrices: torch.Tensor,
        image_shape: tuple[int, int],
        screen_offsets: torch.Tensor | None = None,
        support: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """Line-integral images (V, H, W) in the dtype of ``densities``."""
        ...

    def voxelize(
        self,
        means: torch.Tensor,
        covariances: torch.Tensor,
        densities: torch.Tensor,
        grid: VolumeGrid,
        support: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """Summed Gaussians (nz, ny, nx) at the voxel centres of ``grid`` (normalized coordinates)."""
        ...


_BACKENDS: dict[str, str | Callable[[], RenderBackend]] = {
    "torch": "ixgs_engine.render.torch_backend:TorchBackend",
    "triton": "ixgs_engine.render.triton_backend:TritonBackend",
}
BACKEND_VARIABLE = "IXGS_RENDER_BACKEND"  # auto (default), torch or triton: what select_backend uses
_log = logging.getLogger(__name__)


def register_backend(name: str, factory: str | Callable[[], RenderBackend]) -> None:
    """Make a backend available to :func:`get_backend`: a zero-argument factory, or a
    ``"module:attribute"`` string imported on first use (so optional dependencies such as
    Triton are only imported when that backend is asked for)."""
    _BACKENDS[name] = factory


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def get_backend(name: str = "torch") -> RenderBackend:
    """A new backend instance by name."""
    if name not in _BACKENDS:
        raise ValueError(f"unknown render backend {name!r}; available: {', '.join(available_backends())}")
    factory = _BACKENDS[name]
    if isinstance(factory, str):
        module_name, attribute = factory.split(":")
        factory = getattr(importlib.import_module(module_name), attribute)
    return factory()


def select_backend(device: torch.device | str, name: str | None = None) -> RenderBackend:
    """The backend for a run on ``device``: ``name``, else the ``IXGS_RENDER_BACKEND`` environment
    variable, else ``auto``. Auto picks the fast Triton backend on a CUDA GPU where it installs,
    compiles and passes its self-test, else the torch reference, and logs one line saying which
    and why (a warning when a GPU falls back). A named backend is used as is."""
    choice = name or os.environ.get(BACKEND_VARIABLE) or "auto"
    if choice != "auto":
        if choice not in _BACKENDS:
            raise IXGSError(
                f"unknown render backend {choice!r} (given or from {BACKEND_VARIABLE}); choose auto or "
                f"one of {', '.join(available_backends())}"
            )
        try:
            return get_backend(choice)
        except ImportError as error:
            hint = f"use {BACKEND_VARIABLE}=auto"
            raise IXGSError(f"the {choice} render backend cannot be loaded ({error}); {hint}") from None
    device = torch.device(device)
    if device.type != "cuda":
        _log.info("render backend: torch (device %s)", device)
        return get_backend("torch")
    try:
        fast = get_backend("triton")
        fast.check_device(device)  # type: ignore[attr-defined]
    except ImportError as error:
        _log.warning("render backend: torch, not the fast GPU one: %s (pip install triton)", error)
        return get_backend("torch")
    except Exception as error:  # compile or driver failures included: fall back, never crash
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        _log.warning("render backend: torch, not the fast GPU one: %s", first_line)
        return get_backend("torch")
    _log.info("render backend: triton on %s", torch.cuda.get_device_name(device))
    return fast
