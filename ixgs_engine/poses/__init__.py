"""Fiducial-based C-arm poses: bead phantoms, detection, 2-D/3-D correspondence, PnP/DLT,
joint refinement and fiducial inpainting (docs/poses.md)."""
