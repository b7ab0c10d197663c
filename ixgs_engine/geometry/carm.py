"""C-arm poses from positioner angles and distances, and circular orbits built from them.

Frame: world = patient LPS (x left, y posterior, z superior), isocentre at ``isocenter``.
At primary = secondary = 0 the source is posterior and the detector anterior (an AP view);
the image column ``u`` runs to the patient's left and the row ``v`` to the feet, i.e. the
image is displayed as when facing the patient. Seen from the source this is a mirrored
detector (det M < 0), which is how C-arm images are usually stored.

Angles follow DICOM XA/RF (Positioner Primary Angle, 0018,1510: LAO positive; Positioner
Secondary Angle, 0018,1511: cranial positive): the unit vector from the isocentre to the
detector is ``(sin a cos b, -cos a cos b, sin b)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ixgs_engine.errors import GeometryError


@dataclass(frozen=True)
class Detector:
    """Flat-panel detector: ``pixels`` (columns W, rows H), ``pixel_spacing`` (su, sv) mm,
    and ``offset`` (ou, ov) mm of the panel centre from the point where the ray through the
    isocentre hits it, along u and v."""

    pixels: tuple[int, int]
    pixel_spacing: tuple[float, float]
    offset: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if min(self.pixels) < 1:
            raise GeometryError(f"detector pixel counts must be >= 1, got {self.pixels}")
        if min(self.pixel_spacing) <= 0:
            raise GeometryError(f"detector pixel spacing must be positive, got {self.pixel_spacing}")


def _rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rotation_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def carm_axes(primary_deg: float, secondary_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World unit vectors (u axis, v axis, isocentre-to-detector direction) of a C-arm pose."""
    pose = _rotation_z(np.radians(primary_deg)) @ _rotation_x(-np.radians(secondary_deg))
    u_axis = pose @ np.array([1.0, 0.0, 0.0])
    v_axis = pose @ np.array([0.0, 0.0, -1.0])
    beam = pose @ np.array([0.0, -1.0, 0.0])
    return u_axis, v_axis, beam


def carm_projection_matrix(
    primary_deg: float,
    secondary_deg: float,
    source_to_isocenter: float,
    source_to_detector: float,
    detector: Detector,
    isocenter: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """3x4 projection matrix (w = depth in mm) of a C-arm at the given positioner angles."""
    if not 0 < source_to_isocenter < source_to_detector:
        raise GeometryError(
            "need 0 < source-to-isocentre distance < source-to-detector distance, got "
            f"{source_to_isocenter} and {source_to_detector}"
        )
    u_axis, v_axis, beam = carm_axes(primary_deg, secondary_deg)
    source = np.asarray(isocenter, dtype=np.float64) - source_to_isocenter * beam
    width, height = detector.pixels
    su, sv = detector.pixel_spacing
    ou, ov = detector.offset
    cu = (width - 1) / 2.0 - ou / su
    cv = (height - 1) / 2.0 - ov / sv
    intrinsics = np.array([[source_to_detector / su, 0.0, cu], [0.0, source_to_detector / sv, cv], [0.0, 0.0, 1.0]])
    camera = np.vstack([u_axis, v_axis, beam])
    return intrinsics @ np.hstack([camera, (-camera @ source)[:, None]])


def circular_orbit(
    angles_deg: Sequence[float],
    source_to_isocenter: float,
    source_to_detector: float,
    detector: Detector,
    isocenter: Sequence[float] = (0.0, 0.0, 0.0),
) -> list[np.ndarray]:
    """Projection matrices of a circular orbit about the world z axis (primary angle sweep)."""
    return [
        carm_projection_matrix(angle, 0.0, source_to_isocenter, source_to_detector, detector, isocenter)
        for angle in angles_deg
    ]


def carm_angles(beam_direction: np.ndarray) -> tuple[float, float]:
    """Positioner (primary, secondary) angles in degrees of a source-to-detector direction:
    the inverse of :func:`carm_axes`' beam for in-plane rotation zero."""
    d = np.asarray(beam_direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    secondary = np.degrees(np.arcsin(np.clip(d[2], -1.0, 1.0)))
    primary = np.degrees(np.arctan2(d[0], -d[1]))
    return float(primary), float(secondary)
