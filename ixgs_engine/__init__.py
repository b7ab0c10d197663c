"""IXGS engine: reconstruct a 3-D attenuation volume from a few X-rays at arbitrary C-arm poses."""

__version__ = "0.1.0"
