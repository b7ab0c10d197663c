"""Voxel-volume line integrals (DRRs), their exact adjoint, and SART for arbitrary geometry."""
