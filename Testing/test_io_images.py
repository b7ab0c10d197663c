"""X-ray image reading (every format, DICOM conventions, errors) and the TIFF writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    XRayAngiographicImageStorage,
)

from ixgs_engine.errors import ImageReadError
from ixgs_engine.io import xray_images
from ixgs_engine.io.xray_images import frame_count, read_xray_image, write_xray_image

ROWS, COLUMNS = 33, 40  # not square, so a transpose would show; big enough for JPEG 2000


def _ramp(shape: tuple[int, ...] = (ROWS, COLUMNS), top: int = 4095) -> np.ndarray:
    """Distinct unsigned values in [0, top] that differ along rows and columns."""
    return (np.arange(np.prod(shape)).reshape(shape) * 37 % (top + 1)).astype(np.uint16)


def _dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **attributes: object) -> Path:
    """Write an X-ray angiography DICOM file, 12-bit (8-bit for uint8 pixels), with extra
    attributes; [frames, rows, columns] pixels make a multi-frame file."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = XRayAngiographicImageStorage
    dataset.Modality = "XA"
    _set_pixels(dataset, pixels, photometric, 8 if pixels.dtype == np.uint8 else 12)
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    if PYDICOM_3:
        dataset.save_as(path, enforce_file_format=True)
    else:  # pydicom 2.4 wants the file meta's identifiers and the encoding spelled out
        dataset.SOPInstanceUID = pydicom.uid.generate_uid()
        dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.is_little_endian, dataset.is_implicit_VR = True, False
        dataset.save_as(path, write_like_original=False)
    return path


PYDICOM_3 = int(pydicom.__version__.split(".")[0]) >= 3
"""pydicom 3 (Slicer 5.12+) writes test files with its own helpers; 2.4 (Slicer 5.10) by hand."""


def _set_pixels(dataset: Dataset, pixels: np.ndarray, photometric: str, bits_stored: int) -> None:
    """Pixel data and the attributes that describe it: pydicom 3's ``set_pixel_data``, or the
    same attributes written one by one for pydicom 2.4."""
    if PYDICOM_3:
        dataset.set_pixel_data(pixels, photometric, bits_stored)
        return
    colour = photometric in ("RGB", "YBR_FULL")
    if pixels.ndim == 3 and not colour:
        dataset.NumberOfFrames = pixels.shape[0]
    dataset.Rows, dataset.Columns = pixels.shape[:2] if colour else pixels.shape[-2:]
    dataset.SamplesPerPixel = 3 if colour else 1
    if colour:
        dataset.PlanarConfiguration = 0
    dataset.PhotometricInterpretation = photometric
    dataset.BitsAllocated = pixels.dtype.itemsize * 8
    dataset.BitsStored = bits_stored
    dataset.HighBit = bits_stored - 1
    dataset.PixelRepresentation = int(pixels.dtype.kind == "i")
    dataset.PixelData = pixels.tobytes()


def _compressed(path: Path, syntax: pydicom.uid.UID) -> Path:
    if not PYDICOM_3 and syntax != RLELossless:
        pytest.skip(f"pydicom {pydicom.__version__} cannot encode {syntax.name}; pydicom 3 runs this test")
    dataset = pydicom.dcmread(path)
    dataset.compress(syntax)
    dataset.save_as(path)
    return path


# ----------------------------------------------------------------------------- plain formats


def test_float_tiff_is_read_exactly_as_stored(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).normal(size=(ROWS, COLUMNS)).astype(np.float32)
    tifffile.imwrite(tmp_path / "view.tif", pixels)
    image = read_xray_image(tmp_path / "view.tif")
    assert image.pixels.dtype == np.float32
    np.testing.assert_array_equal(image.pixels, pixels)
    assert image.pixel_spacing is None and image.photometric is None and image.metadata == {}


def test_integer_tiff_keeps_its_values(tmp_path: Path) -> None:
    pixels = _ramp().astype(np.int16) - 2000
    tifffile.imwrite(tmp_path / "view.tiff", pixels)
    np.testing.assert_array_equal(read_xray_image(tmp_path / "view.tiff").pixels, pixels)


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 65535)])
def test_png_keeps_its_full_range(tmp_path: Path, dtype: type, top: int) -> None:
    pixels = _ramp(top=top).astype(dtype)
    pixels[0, 0], pixels[-1, -1] = 0, top
    Image.fromarray(pixels).save(tmp_path / "view.png")
    np.testing.assert_array_equal(read_xray_image(tmp_path / "view.png").pixels, pixels)


def test_npy_and_a_one_frame_stack(tmp_path: Path) -> None:
    pixels = np.random.default_rng(1).random((1, ROWS, COLUMNS))
    np.save(tmp_path / "view.npy", pixels)
    np.testing.assert_allclose(read_xray_image(tmp_path / "view.npy").pixels, pixels[0], rtol=1e-7)


@pytest.mark.parametrize("name", ["view.mha", "view.nrrd", "view.nii", "view.nii.gz"])
@pytest.mark.parametrize("one_slice_3d", [False, True])
def test_itk_images_give_pixels_and_spacing(tmp_path: Path, name: str, one_slice_3d: bool) -> None:
    pixels = np.random.default_rng(2).random((ROWS, COLUMNS)).astype(np.float32)
    itk_image = sitk.GetImageFromArray(pixels[None] if one_slice_3d else pixels)
    itk_image.SetSpacing((0.3, 0.4, 1.0) if one_slice_3d else (0.3, 0.4))
    sitk.WriteImage(itk_image, str(tmp_path / name))
    image = read_xray_image(tmp_path / name)
    np.testing.assert_array_equal(image.pixels, pixels)
    assert image.pixel_spacing == pytest.approx((0.3, 0.4))


def test_content_decides_over_the_extension(tmp_path: Path) -> None:
    pixels = np.arange(12, dtype=np.float32).reshape(3, 4)
    tifffile.imwrite(tmp_path / "view.tif", pixels)
    (tmp_path / "view.tif").rename(tmp_path / "view.png")
    np.testing.assert_array_equal(read_xray_image(tmp_path / "view.png").pixels, pixels)


def test_frame_count_of_plain_files_is_one(tmp_path: Path) -> None:
    np.save(tmp_path / "view.npy", np.zeros((3, 4)))
    assert frame_count(tmp_path / "view.npy") == 1
    assert read_xray_image(tmp_path / "view.npy", frame=0).pixels.shape == (3, 4)


# ----------------------------------------------------------------------------- DICOM


def test_dicom_values_spacing_and_metadata(tmp_path: Path) -> None:
    pixels = _ramp()
    path = _dicom(
        tmp_path / "IM0001",
        pixels,  # no extension: recognised by its 'DICM' preamble
        ImagerPixelSpacing=[0.2, 0.15],
        PixelSpacing=[0.1, 0.1],
        KVP=70,
        PositionerPrimaryAngle=-30.5,
        PositionerSecondaryAngle=12,
        DistanceSourceToDetector=1200,
        DistanceSourceToPatient=800,
    )
    image = read_xray_image(path)
    np.testing.assert_array_equal(image.pixels, pixels)
    assert image.photometric == "MONOCHROME2"
    assert image.pixel_spacing == pytest.approx((0.15, 0.2))  # (column, row) from ImagerPixelSpacing
    assert image.metadata == {
        "Modality": "XA",
        "KVP": 70.0,
        "PositionerPrimaryAngle": -30.5,
        "PositionerSecondaryAngle": 12.0,
        "DistanceSourceToDetector": 1200.0,
        "DistanceSourceToPatient": 800.0,
    }
    assert all(type(value) in (str, float) for value in image.metadata.values())
    assert frame_count(path) == 1


def test_dicom_without_file_meta_is_read_by_extension(tmp_path: Path) -> None:
    dataset = Dataset()
    dataset.SOPClassUID = DigitalXRayImageStorageForPresentation
    _set_pixels(dataset, _ramp(), "MONOCHROME2", 12)
    if PYDICOM_3:
        del dataset.file_meta
        dataset.save_as(tmp_path / "old.dcm", implicit_vr=True, little_endian=True)
    else:
        dataset.is_implicit_VR, dataset.is_little_endian = True, True
        dataset.save_as(tmp_path / "old.dcm", write_like_original=True)
    assert (tmp_path / "old.dcm").read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(read_xray_image(tmp_path / "old.dcm").pixels, _ramp())


def test_dicom_rescale_slope_and_intercept_are_applied(tmp_path: Path) -> None:
    pixels = _ramp()
    path = _dicom(tmp_path / "a.dcm", pixels, RescaleSlope=0.5, RescaleIntercept=10, RescaleType="US")
    np.testing.assert_allclose(read_xray_image(path).pixels, pixels * 0.5 + 10)


def test_monochrome1_is_inverted_within_the_storable_range(tmp_path: Path) -> None:
    pixels = _ramp()
    plain = _dicom(tmp_path / "plain.dcm", pixels, "MONOCHROME1")
    image = read_xray_image(plain)
    assert image.photometric == "MONOCHROME1"
    np.testing.assert_array_equal(image.pixels, 4095.0 - pixels)
    # Rescaled: the range [0, 4095] becomes [-100, 8090], and x*2-100 reflects to 8090-2x.
    rescaled = _dicom(tmp_path / "rescaled.dcm", pixels, "MONOCHROME1", RescaleSlope=2, RescaleIntercept=-100)
    np.testing.assert_allclose(read_xray_image(rescaled).pixels, 8090.0 - 2.0 * pixels)


def _windowed(values: np.ndarray, center: float, width: float, top: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 LINEAR windowing onto [0, top]."""
    center, width = center - 0.5, width - 1.0
    return np.clip(((values - center) / width + 0.5) * top, 0.0, top)


def test_voi_window_is_applied_only_when_asked(tmp_path: Path) -> None:
    pixels = _ramp()
    window = {"WindowCenter": 1500, "WindowWidth": 1001}
    path = _dicom(tmp_path / "a.dcm", pixels, **window)
    np.testing.assert_array_equal(read_xray_image(path).pixels, pixels)
    expected = _windowed(pixels.astype(np.float64), 1500, 1001, 4095)
    np.testing.assert_allclose(read_xray_image(path, apply_voi=True).pixels, expected, atol=1e-3)
    inverted = _dicom(tmp_path / "b.dcm", pixels, "MONOCHROME1", **window)
    np.testing.assert_allclose(read_xray_image(inverted, apply_voi=True).pixels, 4095 - expected, atol=1e-3)


def test_multiframe_dicom_needs_a_frame(tmp_path: Path) -> None:
    frames = _ramp((3, ROWS, COLUMNS))
    path = _dicom(tmp_path / "run.dcm", frames)
    assert frame_count(path) == 3
    for index in range(3):
        np.testing.assert_array_equal(read_xray_image(path, frame=index).pixels, frames[index])
    with pytest.raises(ImageReadError, match=r"multi-frame image with 3 frames.*views\[\]\.frame.*0 to 2"):
        read_xray_image(path)
    with pytest.raises(ImageReadError, match=r"frame 3 is out of range: the file holds 3 frames.*0 and 2"):
        read_xray_image(path, frame=3)
    with pytest.raises(ImageReadError, match=r"frame -1 is out of range"):
        read_xray_image(path, frame=-1)


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless])
def test_compressed_dicom_decodes_to_the_original_values(tmp_path: Path, syntax: pydicom.uid.UID) -> None:
    frames = _ramp((2, ROWS, COLUMNS))
    path = _compressed(_dicom(tmp_path / "run.dcm", frames), syntax)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_xray_image(path, frame=1).pixels, frames[1])


# ----------------------------------------------------------------------------- errors


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match=r"missing\.tif: does not exist"):
        read_xray_image(tmp_path / "missing.tif")
    with pytest.raises(ImageReadError, match=r"is a folder, not an image file"):
        read_xray_image(tmp_path)


def test_unknown_formats(tmp_path: Path) -> None:
    (tmp_path / "view.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    with pytest.raises(ImageReadError, match=r"unsupported image format '\.jpg'.*use TIFF, PNG, NPY"):
        read_xray_image(tmp_path / "view.jpg")
    (tmp_path / "IM0002").write_bytes(b"plain text")
    with pytest.raises(ImageReadError, match=r"not a DICOM file \(no 'DICM' preamble\) and has no extension"):
        frame_count(tmp_path / "IM0002")


def test_corrupt_files(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "cut.tif", np.ones((ROWS, COLUMNS), dtype=np.float32))
    (tmp_path / "cut.tif").write_bytes((tmp_path / "cut.tif").read_bytes()[:3000])
    with pytest.raises(
        ImageReadError,
        match=r"cut\.tif: cannot be read \(failed to read .+\)\. check that the file is complete",
    ):
        read_xray_image(tmp_path / "cut.tif")
    (tmp_path / "empty.tif").write_bytes(b"II*\x00" + b"\x00" * 20)
    with pytest.raises(ImageReadError, match=r"empty\.tif: holds no pixels"):
        read_xray_image(tmp_path / "empty.tif")
    (tmp_path / "bad.nrrd").write_bytes(b"garbage")
    with pytest.raises(ImageReadError, match=r"bad\.nrrd: cannot be read \(Unable to determine ImageIO reader"):
        read_xray_image(tmp_path / "bad.nrrd")


@pytest.mark.filterwarnings("ignore:Expected implicit VR")
def test_invalid_dicom_and_unopenable_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bad.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00ZZ\x04\x00abcd")
    with pytest.raises(ImageReadError, match=r"bad\.dcm: cannot be read \(not valid DICOM: Unknown Value Repr"):
        read_xray_image(path)

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError("Permission denied")

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(ImageReadError, match=r"bad\.dcm: cannot be opened \(Permission denied\)"):
        read_xray_image(path)


def test_images_that_are_not_2d_greyscale(tmp_path: Path) -> None:
    np.save(tmp_path / "stack.npy", np.zeros((2, 3, 4)))
    with pytest.raises(ImageReadError, match=r"holds a 2 x 3 x 4 array, not a 2-D greyscale image"):
        read_xray_image(tmp_path / "stack.npy")
    Image.fromarray(np.zeros((3, 4, 3), dtype=np.uint8)).save(tmp_path / "colour.png")
    with pytest.raises(ImageReadError, match=r"is a RGB PNG, not a greyscale image.*8- or 16-bit"):
        read_xray_image(tmp_path / "colour.png")
    np.save(tmp_path / "complex.npy", np.zeros((3, 4), dtype=np.complex64))
    with pytest.raises(ImageReadError, match=r"holds complex64 values, not real numbers"):
        read_xray_image(tmp_path / "complex.npy")
    colour = np.zeros((ROWS, COLUMNS, 3), dtype=np.uint8)
    path = _dicom(tmp_path / "colour.dcm", colour, "RGB")
    with pytest.raises(ImageReadError, match=r"is a RGB image, not a greyscale X-ray.*MONOCHROME1 or MONOCHROME2"):
        read_xray_image(path)


def test_frame_of_a_single_frame_file(tmp_path: Path) -> None:
    np.save(tmp_path / "view.npy", np.zeros((3, 4)))
    with pytest.raises(ImageReadError, match=r"frame 1 is out of range: the file holds 1 frame\. remove views"):
        read_xray_image(tmp_path / "view.npy", frame=1)


def test_dicom_without_pixel_data(tmp_path: Path) -> None:
    dataset = pydicom.dcmread(_dicom(tmp_path / "a.dcm", _ramp()))
    del dataset.PixelData
    dataset.save_as(tmp_path / "a.dcm")
    with pytest.raises(ImageReadError, match=r"a\.dcm: holds no pixel data"):
        read_xray_image(tmp_path / "a.dcm")


def test_undecodable_dicom_pixel_data(tmp_path: Path) -> None:
    path = _compressed(_dicom(tmp_path / "j2k.dcm", _ramp()), JPEG2000Lossless)
    dataset = pydicom.dcmread(path)
    dataset.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])
    dataset.save_as(path)
    with pytest.raises(
        ImageReadError,
        match=r"pixel data \(JPEG 2000 Image Compression \(Lossless Only\)\) cannot be decoded.*"
        r"pip install pylibjpeg pylibjpeg-openjpeg",
    ):
        read_xray_image(path)
    truncated = pydicom.dcmread(_dicom(tmp_path / "short.dcm", _ramp()))
    truncated.PixelData = truncated.PixelData[:100]
    truncated.save_as(tmp_path / "short.dcm")
    with pytest.raises(ImageReadError, match=r"Explicit VR Little Endian\) cannot be decoded.*probably truncated"):
        read_xray_image(tmp_path / "short.dcm")


# ----------------------------------------------------------------------------- writer


def test_write_xray_image_round_trip_and_atomicity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pixels = np.random.default_rng(3).normal(size=(ROWS, COLUMNS))
    path = tmp_path / "images" / "000.tif"
    write_xray_image(path, pixels)
    np.testing.assert_array_equal(read_xray_image(path).pixels, pixels.astype(np.float32))

    def fail(*args: object, **kwargs: object) -> None:
        Path(args[0]).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(xray_images.tifffile, "imwrite", fail)
    with pytest.raises(OSError, match="disk full"):
        write_xray_image(path, np.zeros((2, 2)))
    assert sorted(p.name for p in path.parent.iterdir()) == ["000.tif"]
    np.testing.assert_array_equal(read_xray_image(path).pixels, pixels.astype(np.float32))


def test_write_xray_image_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"must be 2-D, got shape \(2, 3, 4\)"):
        write_xray_image(tmp_path / "a.tif", np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"writes TIFF files"):
        write_xray_image(tmp_path / "a.png", np.zeros((2, 3)))
