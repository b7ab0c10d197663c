"""Exceptions whose messages tell the user which file or view is wrong and what to do."""

from __future__ import annotations

import errno
import re
from collections.abc import Mapping
from pathlib import Path

_OS_ERROR_FIXES = {
    errno.ENOSPC: "free some space or write elsewhere; nothing partial was left",
    errno.EACCES: "choose a folder you can write to",
    errno.EPERM: "choose a folder you can write to",
    errno.EROFS: "choose a writable folder",
    errno.ENOTDIR: "a path component is a file, not a folder; choose another path",
    errno.EISDIR: "give a file name, not a folder",
    errno.EEXIST: "a file stands where a folder of that path must go; choose another path",
}


def os_error_fix(error: OSError) -> str:
    """What to do about a failed file operation, by its errno."""
    return _OS_ERROR_FIXES.get(error.errno or 0, "check the path")


def write_error_fix(error: BaseException) -> str:
    """What to do about a file that could not be written: free space after a full disk, another
    folder where writing is not allowed, otherwise check the folder."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS):
        return _OS_ERROR_FIXES[error.errno]
    return "check that the folder is writable and the disk has space"


class IXGSError(Exception):
    """Base class of every error the engine reports to a user.

    A message names the library's parameters, not a front end's controls: a parameter stands
    in backticks (``pass `overwrite` to replace it``), and each front end says it in its own
    words with :func:`name_parameters` (the command line as a flag, a module as its control's label)."""


_PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)`")


def name_parameters(message: str, names: Mapping[str, str]) -> str:
    """``message`` with each parameter it names replaced by what a front end calls it
    (``names``: parameter -> flag or control label); a parameter ``names`` lacks keeps its own
    name, without the backticks."""
    return _PARAMETER.sub(lambda found: names.get(found[1], found[1]), message)


class ImageReadError(IXGSError):
    """An X-ray image file cannot be read or holds unusable data."""

    def __init__(self, path: str | Path, problem: str, hint: str = "") -> None:
        self.path = Path(path)
        text = f"{self.path}: {problem}"
        super().__init__(f"{text}. {hint}" if hint else text)


class VolumeIOError(IXGSError):
    """A volume file cannot be read or written."""

    def __init__(self, path: str | Path, problem: str, hint: str = "") -> None:
        self.path = Path(path)
        text = f"{self.path}: {problem}"
        super().__init__(f"{text}. {hint}" if hint else text)


class ScanError(IXGSError):
    """A scan folder (scan.json and its images) is inconsistent; names the view and file."""

    def __init__(self, problem: str, view: int | None = None, image: str | None = None) -> None:
        self.view = view
        self.image = image
        where = ""
        if view is not None:
            where = f"view {view}" + (f" ({image})" if image else "") + ": "
        super().__init__(where + problem)


class GeometryError(IXGSError):
    """A projection matrix or geometry description is unusable."""
