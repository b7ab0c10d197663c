"""Additive X-ray splatting and voxelization of radiative Gaussians behind swappable backends."""

from ixgs_engine.render.backend import (
    RenderBackend,
    available_backends,
    get_backend,
    register_backend,
)

__all__ = ["RenderBackend", "available_backends", "get_backend", "register_backend"]
