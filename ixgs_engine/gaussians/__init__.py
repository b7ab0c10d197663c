"""The radiative Gaussian model: parameters, activations, initialization, file format; densification (the strategy that changes their number)."""

from ixgs_engine.gaussians.model import FORMAT, SCALE_BOUNDS, GaussianModel, knn_scales

__all__ = ["FORMAT", "SCALE_BOUNDS", "GaussianModel", "knn_scales"]
