"""Gaussian reconstruction: configuration and presets, initialization, the optimization loop,
and writing the volume."""
