"""Calibration phantoms: 3-D bead positions and diameters, optional C-arm intrinsics (JSON).

File format ``ixgs-bead-phantom/1`` (docs/poses.md)::

    {"format": "ixgs-bead-phantom/1", "name": "helix", "units": "mm",
     "beads": [{"position": [x, y, z], "diameter": d}, ...],
     "intrinsics": {"source_to_detector": 1000, "pixel_spacing": [su, sv],
                    "principal_point": [cu, cv], "mirrored": true},        # optional
     "world_from_phantom": [[4x4]]}                                         # optional

Bead positions are in the phantom's own frame; ``world_from_phantom`` (default identity) places
it in the scan's world frame, so estimated projection matrices map world points.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ixgs_engine.errors import IXGSError
from ixgs_engine.io import atomic_output, read_json

FORMAT = "ixgs-bead-phantom/1"


class PhantomError(IXGSError):
    """A calibration phantom file is missing, malformed or unusable."""


@dataclass(frozen=True)
class CarmIntrinsics:
    """Known C-arm intrinsics. ``principal_point`` None means the image centre; ``mirrored``
    None means "decide from the data" (C-arm images are usually mirrored, docs/geometry.md)."""

    source_to_detector: float
    pixel_spacing: tuple[float, float]
    principal_point: tuple[float, float] | None = None
    mirrored: bool | None = None

    def matrix(self, image_shape: tuple[int, int], mirrored: bool) -> np.ndarray:
        """K (3x3, K[2,2] = 1) for an image of ``image_shape`` (H, W); K[1,1] < 0 when mirrored."""
        height, width = image_shape
        cu, cv = self.principal_point if self.principal_point is not None else ((width - 1) / 2, (height - 1) / 2)
        su, sv = self.pixel_spacing
        sign = -1.0 if mirrored else 1.0
        return np.array(
            [[self.source_to_detector / su, 0.0, cu], [0.0, sign * self.source_to_detector / sv, cv], [0.0, 0.0, 1.0]]
        )

    def to_dict(self) -> dict:
        out: dict = {"source_to_detector": self.source_to_detector, "pixel_spacing": list(self.pixel_spacing)}
        if self.principal_point is not None:
            out["principal_point"] = list(self.principal_point)
        if self.mirrored is not None:
            out["mirrored"] = self.mirrored
        return out


@dataclass(frozen=True)
class BeadPhantom:
    """Bead centres (N, 3) in world mm (``world_from_phantom`` already applied) and diameters (N,) mm."""

    name: str
    positions: np.ndarray
    diameters: np.ndarray
    intrinsics: CarmIntrinsics | None = None

    @property
    def count(self) -> int:
        return int(self.positions.shape[0])

    def to_dict(self) -> dict:
        out: dict = {
            "format": FORMAT,
            "name": self.name,
            "units": "mm",
            "beads": [
                {"position": [round(float(c), 6) for c in p], "diameter": float(d)}
                for p, d in zip(self.positions, self.diameters, strict=True)
            ],
        }
        if self.intrinsics is not None:
            out["intrinsics"] = self.intrinsics.to_dict()
        return out


def _numbers(value, length: int, what: str, path: Path) -> list[float]:
    try:
        numbers = [float(x) for x in value]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) != length or not np.all(np.isfinite(numbers)):
        raise PhantomError(f"{path}: {what} must be {length} finite numbers, got {value!r}")
    return numbers


def _parse_intrinsics(data, path: Path) -> CarmIntrinsics:
    if not isinstance(data, dict) or "source_to_detector" not in data or "pixel_spacing" not in data:
        raise PhantomError(f'{path}: "intrinsics" needs "source_to_detector" (mm) and "pixel_spacing" [su, sv] (mm)')
    sdd = _numbers([data["source_to_detector"]], 1, '"intrinsics.source_to_detector"', path)[0]
    spacing = _numbers(data["pixel_spacing"], 2, '"intrinsics.pixel_spacing"', path)
    if sdd <= 0 or min(spacing) <= 0:
        raise PhantomError(f"{path}: source_to_detector and pixel_spacing must be positive")
    point = data.get("principal_point")
    mirrored = data.get("mirrored")
    if mirrored is not None and not isinstance(mirrored, bool):
        raise PhantomError(f'{path}: "intrinsics.mirrored" must be true, false or absent')
    principal = tuple(_numbers(point, 2, '"intrinsics.principal_point"', path)) if point is not None else None
    return CarmIntrinsics(sdd, (spacing[0], spacing[1]), principal, mirrored)


def phantom_from_dict(data, path: Path) -> BeadPhantom:
    """Check and parse a phantom document (``path`` only names it in messages)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise PhantomError(
            f'{path}: not a bead phantom ("format" must be "{FORMAT}", got {found!r}); '
            "make one with `ixgs poses make-phantom`"
        )
    beads = data.get("beads")
    if not isinstance(beads, list) or not beads:
        raise PhantomError(f'{path}: "beads" must be a non-empty list of {{"position": [x, y, z], "diameter": d}}')
    positions, diameters = [], []
    for index, bead in enumerate(beads):
        if not isinstance(bead, dict) or "position" not in bead or "diameter" not in bead:
            raise PhantomError(f'{path}: bead {index} needs "position" [x, y, z] and "diameter" (mm)')
        positions.append(_numbers(bead["position"], 3, f"bead {index} position", path))
        diameter = _numbers([bead["diameter"]], 1, f"bead {index} diameter", path)[0]
        if diameter <= 0:
            raise PhantomError(f"{path}: bead {index} diameter must be positive, got {diameter}")
        diameters.append(diameter)
    points = np.asarray(positions)
    if len(points) < 6:
        raise PhantomError(
            f"{path}: {len(points)} beads; a pose needs at least 6 (4 with known intrinsics), "
            "and robust matching many more (the helix has 24)"
        )
    if np.linalg.svd(points - points.mean(0), compute_uv=False)[-1] < 1e-3:
        raise PhantomError(f"{path}: the beads are coplanar; a projection matrix needs non-coplanar beads")
    if "world_from_phantom" in data:
        try:
            transform = np.asarray(data["world_from_phantom"], dtype=np.float64).reshape(4, 4)
        except (TypeError, ValueError):
            raise PhantomError(f'{path}: "world_from_phantom" must be a 4x4 matrix') from None
        if not np.all(np.isfinite(transform)) or abs(np.linalg.det(transform[:3, :3])) < 1e-9:
            raise PhantomError(f'{path}: "world_from_phantom" must be a finite invertible 4x4 matrix')
        points = points @ transform[:3, :3].T + transform[:3, 3]
    intrinsics = _parse_intrinsics(data["intrinsics"], path) if data.get("intrinsics") is not None else None
    return BeadPhantom(str(data.get("name", path.stem)), points, np.asarray(diameters), intrinsics)


def read_phantom(path: str | Path) -> BeadPhantom:
    """Read a phantom JSON file; ``helix`` (no extension) names the shipped helix phantom."""
    path = Path(path)
    shipped = resources.files(__package__) / "phantoms" / f"{path}.json"
    if not path.exists() and path.suffix == "" and shipped.is_file():
        path = Path(str(shipped))
    if path.is_dir():
        raise PhantomError(f"{path} is a folder; give a phantom JSON file from `ixgs poses make-phantom` or 'helix'")
    data = read_json(
        path,
        "give a phantom JSON file from `ixgs poses make-phantom` or 'helix' for the shipped helix phantom",
        PhantomError,
    )
    return phantom_from_dict(data, path)


def write_phantom(path: str | Path, phantom: BeadPhantom) -> Path:
    """Write the phantom JSON atomically; returns its path."""
    path = Path(path)
    with atomic_output(path) as temp:
        temp.write_text(json.dumps(phantom.to_dict(), indent=1) + "\n")
    return path


def de_bruijn_code(order: int) -> list[int]:
    """The binary de Bruijn sequence B(2, order), linearized: every window of ``order``
    consecutive symbols occurs once, so the sizes of a few neighbouring beads tell where they are."""
    sequence: list[int] = []
    a = [0] * (order + 1)

    def extend(t: int, p: int) -> None:
        if t > order:
            if order % p == 0:
                sequence.extend(a[1 : p + 1])
            return
        a[t] = a[t - p]
        extend(t + 1, p)
        for symbol in range(a[t - p] + 1, 2):
            a[t] = symbol
            extend(t + 1, t)

    extend(1, 1)
    return sequence + sequence[: order - 1]


def helix_phantom(
    beads: int = 24,
    radius_mm: float = 40.0,
    height_mm: float = 120.0,
    turns: float = 2.0,
    diameters_mm: tuple[float, float] = (3.0, 5.0),
    center=(0.0, 0.0, 0.0),
    name: str = "helix",
    intrinsics: CarmIntrinsics | None = None,
) -> BeadPhantom:
    """Beads evenly spaced along a helix about the z axis; small/large diameters follow a de
    Bruijn code, so the order of the beads is unambiguous in any view."""
    if beads < 6:
        raise PhantomError(f"a helix phantom needs at least 6 beads, got {beads}")
    order = 1
    while 2**order + order - 1 < beads:
        order += 1
    code = de_bruijn_code(order)[:beads]
    k = np.arange(beads)
    angle = 2 * np.pi * turns * k / beads
    positions = np.stack(
        [radius_mm * np.cos(angle), radius_mm * np.sin(angle), height_mm * (k / (beads - 1) - 0.5)], axis=1
    ) + np.asarray(center, dtype=np.float64)
    return BeadPhantom(name, positions, np.asarray([diameters_mm[c] for c in code], dtype=np.float64), intrinsics)
