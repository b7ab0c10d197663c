"""Bone-surface agreement of two volumes on one grid: Dice overlap of the thresholded bone,
and symmetric surface distances in mm (mean, 95th-percentile Hausdorff, maximum).

PSNR weighs every voxel alike; a surgeon looks at bone edges. Surface voxels are each mask's
inner contour (SimpleITK LabelContour); a surface voxel's distance to the other surface is the
other mask's unsigned Maurer distance map there (image spacing, so mm).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import SimpleITK as sitk

from ixgs_engine.io.volumes import volume_to_sitk
from ixgs_engine.phantoms import hu_to_attenuation
from ixgs_engine.volume import Volume

DEFAULT_BONE_HU = 200.0  # between soft tissue (< 100 HU) and trabecular bone (150-300 HU)


def bone_threshold(hu: float = DEFAULT_BONE_HU) -> float:
    """The attenuation (1/mm, water at 70 keV) of ``hu`` Hounsfield units."""
    return float(hu_to_attenuation(hu))


@dataclass
class SurfaceMetrics:
    dice: float
    mean_surface_distance_mm: float
    hausdorff95_mm: float
    hausdorff_mm: float
    test_voxels: int
    reference_voxels: int

    def to_dict(self) -> dict:
        return asdict(self)


def _mask_image(volume: Volume, mask: np.ndarray) -> sitk.Image:
    """The mask as an image padded by one background voxel, so bone cut by the volume's edge
    has a surface there."""
    return sitk.ConstantPad(volume_to_sitk(volume.with_array(mask.astype(np.uint8))), [1, 1, 1], [1, 1, 1], 0)


def _surface_distances(from_mask: sitk.Image, to_mask: sitk.Image) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``from_mask`` to the surface of ``to_mask``."""
    signed = sitk.SignedMaurerDistanceMap(to_mask, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    distance = sitk.Abs(signed)
    surface = sitk.GetArrayFromImage(sitk.LabelContour(from_mask, fullyConnected=False)) > 0
    return sitk.GetArrayFromImage(distance)[surface]


def surface_metrics(test: Volume, reference: Volume, threshold: float) -> SurfaceMetrics:
    """Dice and surface distances of ``test >= threshold`` against ``reference >= threshold``
    (same grid). An empty test mask (nothing above the threshold) gives Dice 0 and infinite
    distances; an empty reference mask raises ValueError."""
    if test.shape != reference.shape:
        raise ValueError(f"surface metrics need volumes on one grid, got shapes {test.shape} and {reference.shape}")
    test_mask = np.asarray(test.array) >= threshold
    ref_mask = np.asarray(reference.array) >= threshold
    if not ref_mask.any():
        raise ValueError(f"the reference has no voxel at or above the bone threshold {threshold:.4g} /mm")
    dice = 2.0 * np.count_nonzero(test_mask & ref_mask) / (np.count_nonzero(test_mask) + np.count_nonzero(ref_mask))
    if not test_mask.any():
        return SurfaceMetrics(0.0, float("inf"), float("inf"), float("inf"), 0, int(ref_mask.sum()))
    test_image, ref_image = _mask_image(test, test_mask), _mask_image(reference, ref_mask)
    forward = _surface_distances(test_image, ref_image)
    backward = _surface_distances(ref_image, test_image)
    both = np.concatenate([forward, backward])
    return SurfaceMetrics(
        dice=float(dice),
        mean_surface_distance_mm=float(both.mean()),
        hausdorff95_mm=float(max(np.percentile(forward, 95), np.percentile(backward, 95))),
        hausdorff_mm=float(both.max()),
        test_voxels=int(test_mask.sum()),
        reference_voxels=int(ref_mask.sum()),
    )
