"""The annotation layouts notebook 01 reads, detected, and imported into the course layout.

* ``course``: ``train/<ID>/images/<ID>.png`` and ``train/<ID>/masks/*.png`` (read as it is);
* ``labels``: image + instance-label pairs, ``images/`` and ``labels/`` (``label_images``);
* ``coco``: a COCO instances JSON beside its images (``coco_annotations``);
* ``geojson``: images beside QuPath GeoJSON exports of the same name (``qupath_annotations``).

:func:`import_dataset` turns any of them into a course-layout folder, with its ``dataset.json``
and ``data_manifest.csv`` (``imported``); from there the checks, split and shards are the same.
"""
from __future__ import annotations

import os
from pathlib import Path

from helpers.data.dataset import DatasetError
from helpers.data.imported import ImportOptions, empty_folder_or_refuse, write_import
from helpers.data.coco_annotations import holds_coco, read_coco
from helpers.data.label_images import holds_label_pairs, read_label_pairs
from helpers.data.qupath_annotations import holds_geojson, read_geojson

LAYOUTS = ("course", "labels", "coco", "geojson")
DESCRIBED = {"course": "the course's train/<ID>/images + train/<ID>/masks",
             "labels": "images/ + labels/ (label images of the same names)",
             "coco": "a COCO instances JSON beside its images",
             "geojson": "images beside QuPath GeoJSON exports of the same names"}
_READERS = {"labels": read_label_pairs, "coco": read_coco, "geojson": read_geojson}


def detect_layout(root: str | os.PathLike) -> str:
    """Which of :data:`LAYOUTS` the folder ``root`` holds; a DatasetError naming what it found."""
    root = Path(root)
    if (root / "train").is_dir():
        return "course"
    if holds_label_pairs(root):
        return "labels"
    if holds_coco(root):
        return "coco"
    if holds_geojson(root):
        return "geojson"
    found = sorted(p.name for p in root.iterdir())[:8] if root.is_dir() else []
    raise DatasetError(f"{root} holds none of the layouts notebook 01 reads (found {found}): "
                       + "; or ".join(DESCRIBED.values()))


def holds_a_layout(root: Path) -> bool:
    try:
        detect_layout(root)
        return True
    except DatasetError:
        return False


def import_dataset(root: str | os.PathLike, out: str | os.PathLike, options: ImportOptions = ImportOptions(),
                   notes: list[str] | None = None) -> Path:
    """The course-layout folder of the dataset under ``root``: ``root`` itself in the course
    layout, else its import into ``out`` (``options.layout`` names it; "" detects it)."""
    layout = options.layout or detect_layout(root)
    if layout not in LAYOUTS:
        raise DatasetError(f"layout {layout!r} is not one of {LAYOUTS}")
    if layout == "course":
        return Path(root)
    empty_folder_or_refuse(Path(out))
    return write_import(_READERS[layout](root, options), out, root, layout, options, notes)


__all__ = ["LAYOUTS", "detect_layout", "holds_a_layout", "import_dataset"]
