"""Projection geometry: 3x4 matrices, C-arm and circular orbits, ROI and scene normalization."""
