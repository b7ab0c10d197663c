"""Projector primitives: voxel-volume line integrals (DRRs) by the Joseph method with their exact
adjoint, for arbitrary geometry, and the bridge to RTK (its geometry and forward projector). The
algorithms built on them are in ``classical``."""
