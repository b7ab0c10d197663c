"""Exceptions whose messages tell the user which file or view is wrong and what to do."""

from __future__ import annotations

from pathlib import Path


class IXGSError(Exception):
    """Base class of every error the engine reports to a user."""


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
