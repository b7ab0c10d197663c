"""Volume files and DICOM series: world geometry survives round trips; errors say what is wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from ixgs_engine.errors import VolumeIOError
from ixgs_engine.io.volumes import read_volume, volume_from_sitk, volume_to_sitk, write_volume
from ixgs_engine.volume import Volume

OBLIQUE = Rotation.from_euler("xyz", [20.0, -10.0, 35.0], degrees=True).as_matrix()


def _volume(dtype: type = np.float32) -> Volume:
    """A small oblique, anisotropic volume with distinct values along each axis."""
    array = (np.arange(4 * 5 * 6).reshape(4, 5, 6) * 7 - 50).astype(dtype)
    return Volume(array, origin=(-10.5, 20.25, 33.0), spacing=(0.7, 0.9, 2.5), direction=OBLIQUE)


def _assert_same(actual: Volume, expected: Volume, atol: float = 1e-5) -> None:
    assert actual.array.dtype == np.float32
    np.testing.assert_array_equal(actual.array, expected.array)
    np.testing.assert_allclose(actual.origin, expected.origin, atol=atol)
    np.testing.assert_allclose(actual.spacing, expected.spacing, atol=atol)
    np.testing.assert_allclose(actual.direction, expected.direction, atol=atol)


def _write_dicom_series(folder: Path, volume: Volume, series_uid: str) -> None:
    """Write ``volume`` (integer values) as one DICOM file per slice with SimpleITK, giving each
    slice the position, orientation and series tags that GDCM sorts and places slices by."""
    image = volume_to_sitk(volume.with_array(volume.array.astype(np.int16)))
    columns = np.asarray(volume.direction)
    orientation = "\\".join(f"{value:.10g}" for value in (*columns[:, 0], *columns[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(image.GetDepth()):
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        plane = image[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.8.498.1",
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{value:.6f}" for value in position),
            "0020|0037": orientation,
        }
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid}-{k:03d}.dcm"))
        writer.Execute(plane)


@pytest.mark.parametrize("name", ["volume.nii.gz", "volume.nii", "volume.nrrd", "volume.mha"])
def test_file_round_trip_keeps_geometry(tmp_path: Path, name: str) -> None:
    volume = _volume()
    path = tmp_path / "new folder" / name
    write_volume(path, volume)
    _assert_same(read_volume(path), volume)
    assert [p.name for p in path.parent.iterdir()] == [name]  # no temporary file left


def test_write_keeps_the_voxel_type_and_reads_float32(tmp_path: Path) -> None:
    volume = _volume(np.int16)
    write_volume(tmp_path / "labels.mha", volume, compress=False)
    assert sitk.ReadImage(str(tmp_path / "labels.mha")).GetPixelID() == sitk.sitkInt16
    _assert_same(read_volume(tmp_path / "labels.mha"), volume)


def test_sitk_conversions_are_inverse() -> None:
    volume = _volume()
    image = volume_to_sitk(volume)
    assert image.GetSize() == volume.size_ijk
    np.testing.assert_allclose(
        image.TransformIndexToPhysicalPoint((1, 2, 3)),
        (volume.index_to_world_matrix() @ [1, 2, 3, 1])[:3],
    )
    _assert_same(volume_from_sitk(image), volume, atol=0)
    mask = volume_to_sitk(volume.with_array(volume.array > 0))
    assert mask.GetPixelID() == sitk.sitkUInt8


def test_dicom_series_keeps_geometry_and_values(tmp_path: Path) -> None:
    volume = _volume()
    _write_dicom_series(tmp_path / "ct", volume, "1.2.826.0.1.3680043.8.498.2")
    _assert_same(read_volume(tmp_path / "ct"), volume)


def test_folder_with_several_series(tmp_path: Path) -> None:
    first, second = "1.2.826.0.1.3680043.8.498.3", "1.2.826.0.1.3680043.8.498.4"
    volume = _volume()
    _write_dicom_series(tmp_path, volume, first)
    _write_dicom_series(tmp_path, volume.with_array(volume.array + 1), second)
    with pytest.raises(VolumeIOError, match=rf"holds 2 DICOM series: .*{second}.*choose one with series_id"):
        read_volume(tmp_path)
    np.testing.assert_array_equal(read_volume(tmp_path, series_id=second).array, volume.array + 1)
    with pytest.raises(VolumeIOError, match=rf"holds no DICOM series '1\.2\.3'\. available series: .*{first}"):
        read_volume(tmp_path, series_id="1.2.3")


def test_series_with_an_odd_slice(tmp_path: Path) -> None:
    volume = _volume()
    series_uid = "1.2.826.0.1.3680043.8.498.5"
    _write_dicom_series(tmp_path / "ct", volume, series_uid)
    smaller = Volume(np.zeros((1, 3, 3)), volume.origin + 100 * OBLIQUE[:, 2], (0.7, 0.9, 2.5), OBLIQUE)
    _write_dicom_series(tmp_path / "other", smaller, series_uid)
    (tmp_path / "other" / f"{series_uid}-000.dcm").rename(tmp_path / "ct" / "odd.dcm")
    with pytest.raises(VolumeIOError, match=r"its DICOM series cannot be read \(.+\)\. check that its slices"):
        read_volume(tmp_path / "ct")


def test_read_errors(tmp_path: Path) -> None:
    with pytest.raises(VolumeIOError, match=r"missing\.nrrd: does not exist"):
        read_volume(tmp_path / "missing.nrrd")
    with pytest.raises(VolumeIOError, match=r"holds no DICOM series\. give a volume file or the folder"):
        read_volume(tmp_path)
    (tmp_path / "volume.vtk").write_bytes(b"x")
    with pytest.raises(VolumeIOError, match=r"unsupported volume format '\.vtk'\. use \.nii, \.nii\.gz, \.nrrd"):
        read_volume(tmp_path / "volume.vtk")
    with pytest.raises(VolumeIOError, match=r"series_id was given for a file"):
        read_volume(tmp_path / "volume.vtk", series_id="1.2.3")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a volume")
    with pytest.raises(VolumeIOError, match=r"broken\.nii\.gz: cannot be read \(Unable to determine ImageIO"):
        read_volume(tmp_path / "broken.nii.gz")


def test_images_that_are_not_volumes(tmp_path: Path) -> None:
    sitk.WriteImage(sitk.Image(4, 5, sitk.sitkFloat32), str(tmp_path / "flat.mha"))
    with pytest.raises(VolumeIOError, match=r"the image has 2 dimensions, a volume needs 3"):
        read_volume(tmp_path / "flat.mha")
    sitk.WriteImage(sitk.Image([4, 5, 6], sitk.sitkVectorFloat32, 3), str(tmp_path / "field.nrrd"))
    with pytest.raises(VolumeIOError, match=r"the image has 3 values per voxel, a volume needs 1"):
        read_volume(tmp_path / "field.nrrd")


def test_write_errors(tmp_path: Path) -> None:
    with pytest.raises(
        VolumeIOError,
        match=r"cannot write the volume format '\.mhd'\. use \.nii, \.nii\.gz, \.nrrd, \.mha",
    ):
        write_volume(tmp_path / "volume.mhd", _volume())
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(
        VolumeIOError,
        match=r"volume\.mha: cannot be written \(.+\)\. check that the folder is writable",
    ):
        write_volume(tmp_path / "file" / "volume.mha", _volume())
