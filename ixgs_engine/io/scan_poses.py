"""A scan written again with other poses: what a run that refines the views' poses leaves
beside its volume, so the refined geometry can be read, reconstructed or loaded like any scan."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ixgs_engine.geometry.projection import validate_projection_matrix
from ixgs_engine.io import atomic_output
from ixgs_engine.io.scan import FORMAT, SCAN_FILE, Scan


def write_scan_with_poses(scan: Scan, folder: str | Path, matrices: Sequence[np.ndarray], extra: dict) -> Path:
    """``scan`` as a new scan folder with ``matrices`` (one per view) as its projection matrices:
    the image files inside the scan's folder copied as they are (DICOM frames, per-view I0 and
    pixel spacing kept), those outside it (a scan.json that points elsewhere, as a copy with
    another box does) referenced where they are; every other entry of scan.json kept, ``extra``
    added; scan.json written last, atomically. Returns it."""
    folder = Path(folder)
    if len(matrices) != len(scan.views):
        raise ValueError(f"{len(scan.views)} views but {len(matrices)} projection matrices")
    views = []
    home = scan.folder.resolve()
    for view, matrix in zip(scan.views, matrices, strict=True):
        source = (scan.folder / view.image).resolve()
        image = view.image
        if source.is_relative_to(home):
            target = folder / source.relative_to(home)
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
            image = source.relative_to(home).as_posix()
        else:
            folder.mkdir(parents=True, exist_ok=True)
            image = Path(os.path.relpath(source, folder.resolve())).as_posix()
        views.append(replace(view, image=image, projection_matrix=validate_projection_matrix(matrix)).to_dict())
    document: dict = {"format": FORMAT, "units": "mm", "image_kind": scan.image_kind}
    if scan.roi is not None:
        document["roi"] = scan.roi.to_dict()
    if scan.i0 is not None:
        document["i0"] = scan.i0
    if scan.fiducials is not None:
        document["fiducials"] = scan.fiducials
    document["views"] = views
    document.update(scan.extra)
    document.update(extra)
    path = folder / SCAN_FILE
    with atomic_output(path) as temp:
        temp.write_text(json.dumps(document, indent=1))
    return path
