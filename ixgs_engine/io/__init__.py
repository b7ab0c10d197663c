"""File input and output: X-ray images, volumes and the scan format.

This package module also holds the few file helpers its readers and writers share: the
extension of a file name (``.nii.gz`` counts as one), atomic replacement of an output file,
and a one-line reason from a SimpleITK exception.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ixgs_engine.errors import IXGSError


def extension_of(path: str | Path) -> str:
    """Lower-case extension of a file name, ``.nii.gz`` kept whole, ``""`` when there is none."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it replaces ``path``.

    A reader never sees a half-written file, and a failed write leaves any previous file
    untouched and no temporary file behind. The temporary name ends with the same extension,
    so writers that pick the format from the extension (SimpleITK) pick the right one. The
    parent folder is created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{extension_of(path)}")
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def itk_reason(error: Exception) -> str:
    """The reason in a SimpleITK exception, without its source location and ITK prefixes."""
    lines = str(error).splitlines()
    detail = " ".join(line.strip() for line in lines[1:]) or str(error)
    return re.sub(r"(sitk::|ITK )ERROR:( \w+\(0x[0-9a-fA-F]+\):)?\s*", "", detail)


def read_json(path: str | Path, missing: str, error: type[IXGSError] = IXGSError) -> object:
    """The JSON value stored in ``path``; a missing or malformed file raises ``error`` naming
    the file (``missing`` tells the user what to give instead)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: file not found; {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as problem:
        raise error(f"{path}: not valid JSON ({problem})") from None
