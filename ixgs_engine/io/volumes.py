"""Read and write 3-D volumes with their world geometry (SimpleITK; LPS millimetres).

Origin, spacing and direction travel unchanged between files and :class:`Volume`, so a
volume written here lands where it belongs in Slicer, ITK-SNAP or SimpleITK.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ixgs_engine.errors import VolumeIOError, write_error_fix
from ixgs_engine.io import atomic_output, extension_of, itk_reason
from ixgs_engine.volume import Volume, VolumeGrid

READ_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
# Single-file formats only: .nhdr/.mhd keep their voxels in a second file, which a write
# through a temporary name (atomic replacement) would leave under that temporary name.
WRITE_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".mha")


def read_volume(path: str | Path, series_id: str | None = None) -> Volume:
    """Read a volume file (NIfTI, NRRD, MetaImage) or a folder holding a DICOM series.

    Values become float32 (a DICOM series has its rescale applied, e.g. CT in HU). In a folder
    with several series, ``series_id`` (a Series Instance UID) picks one.
    """
    path = Path(path)
    if not path.exists():
        raise VolumeIOError(path, "does not exist", "check the file or folder name")
    if path.is_dir():
        image = _read_dicom_series(path, series_id)
    else:
        if series_id is not None:
            raise VolumeIOError(path, "series_id was given for a file", "series_id picks a series in a DICOM folder")
        extension = extension_of(path)
        if extension not in READ_EXTENSIONS:
            raise VolumeIOError(
                path,
                f"has an unsupported volume format '{extension}'",
                f"use {', '.join(READ_EXTENSIONS)} or a folder holding a DICOM series",
            )
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as error:
            raise VolumeIOError(
                path,
                f"cannot be read ({itk_reason(error)})",
                "check that the file is complete and not corrupt",
            ) from error
    try:
        return volume_from_sitk(image)
    except ValueError as error:
        raise VolumeIOError(path, str(error), "give a 3-D single-component volume") from error


def write_volume(path: str | Path, volume: Volume, compress: bool = True) -> None:
    """Write ``volume`` in the format its extension names, atomically, creating the folder.

    The voxel type is kept (float32 stays float32). ``compress`` applies to .nrrd and .mha;
    .nii.gz is always compressed and .nii never.
    """
    path = Path(path)
    extension = extension_of(path)
    if extension not in WRITE_EXTENSIONS:
        raise VolumeIOError(
            path,
            f"cannot write the volume format '{extension}'",
            f"use {', '.join(WRITE_EXTENSIONS)} (single-file formats)",
        )
    image = volume_to_sitk(volume)
    try:
        with atomic_output(path) as temp:
            sitk.WriteImage(image, str(temp), useCompression=compress)
    except (RuntimeError, OSError) as error:
        reason = itk_reason(error) if isinstance(error, RuntimeError) else str(error)
        raise VolumeIOError(
            path,
            f"cannot be written ({reason})",
            write_error_fix(error),
        ) from error


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """A SimpleITK image with the volume's voxels (same type; bool as uint8) and geometry."""
    array = volume.array.astype(np.uint8) if volume.array.dtype == bool else volume.array
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetOrigin([float(value) for value in volume.origin])
    image.SetSpacing([float(value) for value in volume.spacing])
    image.SetDirection([float(value) for value in volume.direction.ravel()])
    return image


def volume_from_sitk(image: sitk.Image) -> Volume:
    """A float32 :class:`Volume` with the image's voxels and geometry.

    Raises ValueError when the image is not 3-D with one value per voxel.
    """
    if image.GetDimension() != 3:
        raise ValueError(f"the image has {image.GetDimension()} dimensions, a volume needs 3")
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise ValueError(f"the image has {components} values per voxel, a volume needs 1")
    return Volume(
        sitk.GetArrayFromImage(image).astype(np.float32, copy=False),
        origin=image.GetOrigin(),
        spacing=image.GetSpacing(),
        direction=np.reshape(image.GetDirection(), (3, 3)),
    )


def _read_dicom_series(folder: Path, series_id: str | None) -> sitk.Image:
    """The one DICOM series in ``folder``, or the one ``series_id`` names."""
    reader = sitk.ImageSeriesReader()
    available = list(reader.GetGDCMSeriesIDs(str(folder)))
    if not available:
        raise VolumeIOError(folder, "holds no DICOM series", "give a volume file or the folder of a DICOM series")
    if series_id is None and len(available) > 1:
        raise VolumeIOError(
            folder,
            f"holds {len(available)} DICOM series: {', '.join(available)}",
            "choose one with series_id",
        )
    if series_id is not None and series_id not in available:
        raise VolumeIOError(
            folder,
            f"holds no DICOM series '{series_id}'",
            f"available series: {', '.join(available)}",
        )
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series_id or available[0]))
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise VolumeIOError(
            folder,
            f"its DICOM series cannot be read ({itk_reason(error)})",
            "check that its slices are complete, not corrupt and all the same size",
        ) from error


def require_finite(volume: Volume, path: str | Path) -> Volume:
    """``volume`` if every voxel is a number; otherwise a VolumeIOError naming the file, how
    many voxels are NaN or infinite and where the first one is (projecting or scoring such a
    volume would spread NaN through every result)."""
    bad = ~np.isfinite(volume.array)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0][::-1])
        raise VolumeIOError(
            path,
            f"{int(bad.sum())} voxels are NaN or infinite (the first at index i,j,k = {first})",
            "replace them (e.g. with air: -1000 HU, or 0 /mm) and try again",
        )
    return volume


INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}


def resample_to(volume: Volume, grid: VolumeGrid, interpolator: str = "linear", default: float = 0.0) -> Volume:
    """``volume``'s values at the voxel centres of ``grid`` (world positions; ``default``
    outside the volume), float32."""
    reference = volume_to_sitk(Volume.on_grid(grid, np.zeros(grid.shape, dtype=np.float32)))
    image = volume_to_sitk(volume.with_array(np.asarray(volume.array, dtype=np.float32)))
    resampled = sitk.Resample(
        image, reference, sitk.Transform(), INTERPOLATORS[interpolator], float(default), sitk.sitkFloat32
    )
    return volume_from_sitk(resampled)
