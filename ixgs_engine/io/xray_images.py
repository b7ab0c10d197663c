"""Read one X-ray image (TIFF, PNG, NPY, MHA/NRRD/NIfTI or DICOM) into a float32 array.

Pixels are returned exactly as stored: indexed ``[row v, column u]`` with no flipping or
transposing, because projection matrices refer to the stored pixel grid (docs/scan-format.md).
Checks of the values (finite, positive line integrals, ...) belong to the scan reader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
import tifffile
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ixgs_engine.errors import ImageReadError
from ixgs_engine.io import atomic_output, extension_of, itk_reason

try:  # pydicom 3 (3D Slicer 5.12 and later): decodes one frame of a multi-frame file
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    from pydicom.pixels import pixel_array as _decode_one_frame
except ImportError:  # pydicom 2.4 (3D Slicer 5.10): the same LUTs, frames decoded together
    from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

    _decode_one_frame = None

# Leading bytes that identify a format whatever the file is called.
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "png",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"II+\x00": "tiff",
    b"MM\x00+": "tiff",
    b"\x93NUMPY": "npy",
}
_EXTENSIONS = {
    ".tif": "tiff",
    ".tiff": "tiff",
    ".png": "png",
    ".npy": "npy",
    ".mha": "itk",
    ".mhd": "itk",
    ".nrrd": "itk",
    ".nhdr": "itk",
    ".nii": "itk",
    ".nii.gz": "itk",
    ".dcm": "dicom",
    ".dicom": "dicom",
}
_SUPPORTED = "TIFF, PNG, NPY, MHA/MHD, NRRD/NHDR, NIfTI (.nii, .nii.gz) or DICOM (any file name)"
_GREY_PNG_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "F")
_DICOM_DECODERS = "pip install pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg"
# DICOM attributes copied into XrayImage.metadata when present (acquisition geometry hints).
_DICOM_METADATA = (
    "Modality",
    "Manufacturer",
    "PresentationIntentType",
    "KVP",
    "PositionerPrimaryAngle",
    "PositionerSecondaryAngle",
    "DistanceSourceToDetector",
    "DistanceSourceToIsocenter",
    "DistanceSourceToPatient",
)
_ENCODING_SYNTAX = {
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}


@dataclass
class XrayImage:
    """One X-ray image as read from a file.

    ``pixels``: 2-D float32, ``[row v, column u]`` as stored. ``pixel_spacing``: detector
    pixel size ``(column, row)`` in mm when the file records it (DICOM, MHA/NRRD/NIfTI), else
    None. ``photometric``: the DICOM Photometric Interpretation as stored in the file (None for
    other formats); MONOCHROME1 pixels have already been inverted. ``metadata``: a few DICOM
    acquisition attributes (kVp, positioner angles, source distances) when present.
    """

    pixels: np.ndarray
    pixel_spacing: tuple[float, float] | None = None
    photometric: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def read_xray_image(path: str | Path, frame: int | None = None, apply_voi: bool = False) -> XrayImage:
    """Read one X-ray image; ``frame`` (0-based) picks a frame of a multi-frame DICOM.

    The format is recognised from the file's content (the DICOM 'DICM' preamble, the TIFF, PNG
    and NPY signatures), otherwise from its extension, so DICOM files need no extension.
    Single-frame files accept ``frame`` None or 0; a multi-frame file needs ``frame``.

    DICOM pixels go through the modality LUT (Rescale Slope/Intercept or a Modality LUT
    Sequence) always, since it turns stored values into the manufacturer-independent values
    the image means. The VOI LUT (Window Center/Width or a VOI LUT Sequence) is applied only
    when ``apply_voi`` is true: it is a display transform that clips and stretches values to a
    viewing window, losing the quantitative signal reconstruction needs, so it is useful only
    to mimic what a viewer shows. Other formats carry no VOI and ignore ``apply_voi``.

    MONOCHROME1 images (smallest value displayed white) are inverted so that, as in
    MONOCHROME2, larger means brighter: a value ``x`` becomes ``lo + hi - x``, where
    ``lo``/``hi`` are what the smallest and largest storable values (from Bits Stored and Pixel
    Representation) become through the same modality LUT (and VOI when applied). For 12-bit
    unsigned pixels without rescale that is ``4095 - x``. The reflection depends only on the
    header, not on the image content, so every view of an acquisition is mapped alike, and the
    values keep their nominal range.
    """
    path = Path(path)
    kind = _format_of(path)
    if kind == "dicom":
        return _read_dicom(path, frame, apply_voi)
    _check_frame(path, frame, 1)
    try:
        array, spacing = _READERS[kind](path)
    except ImageReadError:
        raise
    except Exception as error:
        raise _unreadable(path, _reason(error)) from error
    return XrayImage(_as_2d_float(path, array), spacing)


def frame_count(path: str | Path) -> int:
    """Number of frames in an image file: NumberOfFrames for DICOM, 1 for other formats."""
    path = Path(path)
    if _format_of(path) != "dicom":
        return 1
    return _number_of_frames(_open_dicom(path, with_pixels=False))


def write_xray_image(path: str | Path, pixels: np.ndarray) -> None:
    """Write a 2-D image as a float32 TIFF, atomically (a reader never sees a partial file)."""
    array = np.asarray(pixels, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"an X-ray image must be 2-D, got shape {array.shape}")
    if extension_of(path) not in (".tif", ".tiff"):
        raise ValueError(f"write_xray_image writes TIFF files (.tif, .tiff), not {path}")
    with atomic_output(path) as temp:
        tifffile.imwrite(temp, array)


def _format_of(path: Path) -> str:
    """'dicom', 'tiff', 'png', 'npy' or 'itk', from the content first, then the extension."""
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file", "name the image file itself")
    try:
        with path.open("rb") as stream:
            head = stream.read(132)
    except FileNotFoundError as error:
        raise ImageReadError(path, "does not exist", "check the file name and folder") from error
    except OSError as error:
        raise ImageReadError(path, f"cannot be opened ({_reason(error)})") from error
    if head[128:132] == b"DICM":
        return "dicom"
    for signature, kind in _SIGNATURES.items():
        if head.startswith(signature):
            return kind
    extension = extension_of(path)
    if extension in _EXTENSIONS:
        return _EXTENSIONS[extension]
    if not extension:
        raise ImageReadError(
            path,
            "is not a DICOM file (no 'DICM' preamble) and has no extension to tell its format",
            f"supported formats: {_SUPPORTED}",
        )
    raise ImageReadError(path, f"has an unsupported image format '{extension}'", f"use {_SUPPORTED}")


def _check_frame(path: Path, frame: int | None, count: int) -> int:
    """The 0-based frame index to read, or an error saying which frames exist."""
    if frame is None:
        if count > 1:
            raise ImageReadError(
                path,
                f"is a multi-frame image with {count} frames and no frame was chosen",
                f"set views[].frame to the frame to use (0 to {count - 1})",
            )
        return 0
    if not 0 <= frame < count:
        frames = f"{count} frame" + ("s" if count > 1 else "")
        raise ImageReadError(
            path,
            f"frame {frame} is out of range: the file holds {frames}",
            f"set views[].frame between 0 and {count - 1}" if count > 1 else "remove views[].frame",
        )
    return frame


def _read_tiff(path: Path) -> tuple[np.ndarray, None]:
    return tifffile.imread(path), None


def _read_png(path: Path) -> tuple[np.ndarray, None]:
    with Image.open(path) as image:
        if image.mode not in _GREY_PNG_MODES:
            raise ImageReadError(
                path,
                f"is a {image.mode} PNG, not a greyscale image",
                "save the X-ray as an 8- or 16-bit greyscale PNG",
            )
        return np.asarray(image), None


def _read_npy(path: Path) -> tuple[np.ndarray, None]:
    return np.load(path, allow_pickle=False), None


def _read_itk(path: Path) -> tuple[np.ndarray, tuple[float, float]]:
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise _unreadable(path, itk_reason(error)) from error
    spacing = image.GetSpacing()
    return sitk.GetArrayFromImage(image), (float(spacing[0]), float(spacing[1]))


_READERS: dict[str, Callable[[Path], tuple[np.ndarray, tuple[float, float] | None]]] = {
    "tiff": _read_tiff,
    "png": _read_png,
    "npy": _read_npy,
    "itk": _read_itk,
}


def _as_2d_float(path: Path, array: np.ndarray) -> np.ndarray:
    """The image as a 2-D float32 array; leading length-1 axes (a one-frame stack) are dropped.

    Only leading axes go, so a SimpleITK ``[z, y, x]`` array with one slice becomes ``[y, x]``
    and its (x, y) spacing still describes the columns and rows.
    """
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.size == 0:
        raise ImageReadError(path, "holds no pixels", "check that the file is complete and not corrupt")
    if array.ndim != 2:
        shape = " x ".join(str(n) for n in array.shape)
        raise ImageReadError(
            path,
            f"holds a {shape} array, not a 2-D greyscale image",
            "give one single-channel X-ray per file (or one frame of a DICOM with views[].frame)",
        )
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating) or array.dtype == bool):
        raise ImageReadError(path, f"holds {array.dtype} values, not real numbers", "store real pixel values")
    return array.astype(np.float32)


def _open_dicom(path: Path, with_pixels: bool = True) -> Dataset:
    """The dataset of a DICOM file, with a Transfer Syntax even when it had no file meta."""
    try:
        dataset = pydicom.dcmread(path, force=True, stop_before_pixels=not with_pixels)
    except Exception as error:
        raise _unreadable(path, f"not valid DICOM: {_reason(error)}") from error
    encoding = _original_encoding(dataset)
    if "TransferSyntaxUID" not in dataset.file_meta and encoding in _ENCODING_SYNTAX:
        dataset.file_meta.TransferSyntaxUID = _ENCODING_SYNTAX[encoding]
    return dataset


def _original_encoding(dataset: Dataset) -> tuple[bool | None, bool | None]:
    """(implicit VR, little endian) as the file was read: pydicom 3's ``original_encoding``,
    pydicom 2.4's ``read_implicit_vr`` / ``read_little_endian``."""
    if hasattr(type(dataset), "original_encoding"):
        return dataset.original_encoding
    return dataset.read_implicit_vr, dataset.read_little_endian


def _number_of_frames(dataset: Dataset) -> int:
    return int(dataset.get("NumberOfFrames") or 1)


def _read_dicom(path: Path, frame: int | None, apply_voi: bool) -> XrayImage:
    dataset = _open_dicom(path)
    if not any(key in dataset for key in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(
            path,
            "holds no pixel data",
            "it is not a DICOM image (or it is truncated); export the X-ray images themselves",
        )
    index = _check_frame(path, frame, _number_of_frames(dataset))
    photometric = str(dataset.get("PhotometricInterpretation", "")) or None
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReadError(
            path,
            f"is a {photometric or 'colour'} image, not a greyscale X-ray",
            "X-ray images have Photometric Interpretation MONOCHROME1 or MONOCHROME2",
        )
    stored = _decode_frame(path, dataset, index)
    values = _display_values(stored, dataset, apply_voi)
    if photometric == "MONOCHROME1":
        ends = _display_values(_storable_range(dataset), dataset, apply_voi)
        values = ends.min() + ends.max() - values
    return XrayImage(
        _as_2d_float(path, values),
        _dicom_pixel_spacing(dataset),
        photometric,
        _dicom_metadata(dataset),
    )


def _decode_frame(path: Path, dataset: Dataset, index: int) -> np.ndarray:
    syntax = dataset.file_meta.TransferSyntaxUID
    try:
        if _decode_one_frame is not None:
            return _decode_one_frame(dataset, index=index)
        frames = dataset.pixel_array
        return frames[index] if _number_of_frames(dataset) > 1 else frames
    except Exception as error:
        hint = (
            f"install the pixel decoders ({_DICOM_DECODERS}); with them the file is corrupt"
            if syntax.is_compressed
            else "the file is probably truncated or its image attributes are inconsistent"
        )
        raise ImageReadError(
            path, f"its pixel data ({syntax.name}) cannot be decoded: {_reason(error)}", hint
        ) from error


def _display_values(stored: np.ndarray, dataset: Dataset, apply_voi: bool) -> np.ndarray:
    """Stored values through the modality LUT, then the VOI LUT when asked."""
    values = apply_modality_lut(stored, dataset)
    return apply_voi_lut(values, dataset) if apply_voi else values


def _storable_range(dataset: Dataset) -> np.ndarray:
    """The smallest and largest stored values that Bits Stored and Pixel Representation allow."""
    bits = int(dataset.BitsStored)
    if dataset.get("PixelRepresentation", 0) == 1:
        return np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], dtype=np.int64)
    return np.array([0, 2**bits - 1], dtype=np.int64)


def _dicom_pixel_spacing(dataset: Dataset) -> tuple[float, float] | None:
    """(column, row) spacing in mm; Imager Pixel Spacing (at the detector) is preferred to
    Pixel Spacing, which projection images may calibrate to a plane in the patient."""
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        value = dataset.get(keyword)
        if value is not None and len(value) == 2:
            return float(value[1]), float(value[0])
    return None


def _dicom_metadata(dataset: Dataset) -> dict[str, Any]:
    return {
        keyword: _plain(dataset[keyword].value)
        for keyword in _DICOM_METADATA
        if keyword in dataset and dataset[keyword].value not in (None, "")
    }


def _plain(value: Any) -> Any:
    """A pydicom value as plain Python (float, int, str or a list of them)."""
    if isinstance(value, (MultiValue, list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int):
        return int(value)
    return str(value)


def _unreadable(path: Path, reason: str) -> ImageReadError:
    return ImageReadError(path, f"cannot be read ({reason})", "check that the file is complete and not corrupt")


def _reason(error: Exception) -> str:
    """An exception's message on one line, or its type when it has none."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
