"""The course-layout folder an annotation import writes, and what it records.

Every reader of another layout (``label_images``, ``coco_annotations``, ``qupath_annotations``)
yields :class:`ImportedImage` s; :func:`write_import` writes them as the course layout, so the
checks, the split and the shards are the same for every layout:

* ``train/<ID>/images/<ID>.png`` and ``train/<ID>/masks/mask_NNNN.png``, one mask per nucleus;
* ``dataset.json`` (:data:`RECORD_NAME`): the layout and source it came from, and per image its
  source file, pixel size (µm, and where it was read) and group;
* ``data_manifest.csv``: its manifest, the group in the ``organ`` column (the TCGA organ where the
  id says it, else the group the reader found, such as the image's folder).

What it refuses, naming the user's file and the object: two nuclei of the same pixels, a nucleus
over most of its image, two images of the same id. What it repairs with a note: an image without
nuclei is skipped; nuclei that overlap are kept as drawn (each keeps all its pixels, as the course
masks do). The folder is written whole or not at all (a temp folder, renamed), never over one that
holds something, and nothing of the source is changed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from helpers.data import manifest as mf
from helpers.data.dataset import (IMPORT_RECORD, MAX_MASK_FRACTION, DatasetError, _note, mask_digest, name_copy_as,
                                  user_paths)
from helpers.image_codec import encode_png
from helpers.pixel_size import COURSE, UNKNOWN, PixelSize, plausible

RECORD_NAME = IMPORT_RECORD


@dataclass(frozen=True)
class ImportOptions:
    """What notebook 01 tells a reader: the ``layout`` ("" detects it), the ``pixel_size_um`` of
    images whose files do not say, and the COCO categories or QuPath ``classes`` that are nuclei
    (empty: all)."""
    layout: str = ""
    pixel_size_um: float | None = None
    classes: tuple[str, ...] = ()

    def __post_init__(self):
        if self.pixel_size_um is not None and not plausible(self.pixel_size_um):
            raise DatasetError(f"pixel_size_um={self.pixel_size_um} is no microscope's pixel size: give µm per "
                               "pixel, about 0.25 at 40x and 0.5 at 20x")
        object.__setattr__(self, "classes", tuple(self.classes or ()))


@dataclass
class ImportedImage:
    """One annotated image as a reader found it. ``nuclei``: ``(name, mask)`` pairs, the name as
    the user's files know the object (``"label 7"``, ``"annotation id 12"``), the mask bool of the
    image's size; read lazily, one at a time."""
    image_id: str
    source: Path
    image: np.ndarray
    nuclei: Iterable[tuple[str, np.ndarray]]
    pixel_size: PixelSize = UNKNOWN
    group: str = ""
    notes: list[str] = field(default_factory=list)


def empty_folder_or_refuse(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} already exists and is not empty; nothing was overwritten: import into a new "
                           "folder, or remove it yourself")


def write_import(images: Iterable[ImportedImage], out: str | os.PathLike, source: str | os.PathLike,
                 layout: str, options: ImportOptions = ImportOptions(), notes: list[str] | None = None) -> Path:
    """Write ``images`` (read from ``source``, a ``layout``) as a course-layout folder ``out``
    (module doc) and return it."""
    out = Path(out)
    empty_folder_or_refuse(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    name_copy_as(tmp, str(out), str(out) + os.sep)  # notes on the folder being written name the folder it becomes
    try:
        record = {"layout": layout, "source": user_paths(str(source)), "images": {}}
        seen: dict[str, Path] = {}
        for item in images:
            _refuse_same_id(item, seen)
            if _write_image(item, tmp / "train", notes):
                record["images"][item.image_id] = _image_record(item, options)
        if not record["images"]:
            raise DatasetError(f"no image under {source} holds a nucleus: nothing to train on")
        _note_unknown_sizes(record, options, notes)
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=1), encoding="utf-8")
        groups = {k: v["group"] for k, v in record["images"].items()}
        rows = mf.build_manifest(tmp, check_pixels=False, progress=False, groups=groups)
        mf.write_manifest(rows, tmp / mf.MANIFEST_NAME)
        if out.exists():  # an empty folder: rename onto it
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _refuse_same_id(item: ImportedImage, seen: dict[str, Path]) -> None:
    other = seen.get(item.image_id.lower())
    if other is not None:
        raise DatasetError(f"{item.source} and {other} both become image {item.image_id!r} (an id ignores case "
                           "and suffix, and writes characters other than letters, digits, '.', '_' and '-' as '_'): "
                           "rename one of them")
    seen[item.image_id.lower()] = item.source


def _image_record(item: ImportedImage, options: ImportOptions) -> dict:
    size = item.pixel_size if item.pixel_size.um else (
        PixelSize(options.pixel_size_um, "parameter pixel_size_um") if options.pixel_size_um else UNKNOWN)
    return {"source": user_paths(str(item.source)), "pixel_size_um": size.um, "pixel_size_from": size.source,
            "group": safe_name(item.group)}


def safe_name(text: str) -> str:
    """``text`` as a name for ids, groups and shard files: letters, digits, ``. _ -``; a name of
    other characters (``切片1``) keeps what it can and a short hash of the whole, so it is never
    empty and two such names stay apart."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("._")
    if not re.search(r"[^\x00-\x7f]", str(text)):
        return name
    return f"{name}_{hashlib.sha1(str(text).encode()).hexdigest()[:8]}".strip("._")


def _note_unknown_sizes(record: dict, options: ImportOptions, notes) -> None:
    unknown = [k for k, v in record["images"].items() if not v["pixel_size_um"]]
    if unknown:
        _note(notes, f"{len(unknown)} image(s) (e.g. {unknown[0]}) do not say their pixel size and pixel_size_um "
                     "is not set: their size is unknown. Set pixel_size_um (µm per pixel: about 0.25 at 40x, 0.5 "
                     "at 20x) so the model sees nuclei at the size it learnt")


def _write_image(item: ImportedImage, train: Path, notes) -> bool:
    """Write one image and its nuclei; False (with a note) when it holds none. The reader's notes
    are passed on once its nuclei are read (a lazy reader finds some while they are)."""
    folder = train / item.image_id
    (folder / "masks").mkdir(parents=True)
    digests: dict[str, str] = {}
    union = np.zeros(item.image.shape[:2], np.uint16)
    for k, (name, mask) in enumerate(_checked_nuclei(item), start=1):
        digest = mask_digest(mask)
        if digest in digests:
            raise DatasetError(f"{item.source}: {digests[digest]} and {name} cover the same pixels, one nucleus "
                               "drawn twice: delete one of them")
        digests[digest] = name
        union += mask
        (folder / "masks" / f"mask_{k:04d}.png").write_bytes(encode_png(mask.astype(np.uint8) * np.uint8(255)))
    for n in item.notes:
        _note(notes, n)
    if not digests:
        shutil.rmtree(folder)
        _note(notes, f"skipping {item.source}: it has no nucleus annotated")
        return False
    (folder / "images").mkdir()
    (folder / "images" / f"{item.image_id}.png").write_bytes(encode_png(item.image))
    overlap = int((union > 1).sum())
    if overlap:
        _note(notes, f"{item.source}: {overlap} px belong to more than one nucleus; kept "
                     "as drawn (each nucleus keeps all its pixels)")
    return True


def _checked_nuclei(item: ImportedImage) -> Iterator[tuple[str, np.ndarray]]:
    shape = item.image.shape[:2]
    for name, mask in item.nuclei:
        if mask.shape != shape:
            raise DatasetError(f"{item.source}: {name} is {mask.shape[1]}x{mask.shape[0]} (WxH) but the image is "
                               f"{shape[1]}x{shape[0]}")
        if mask.mean() > MAX_MASK_FRACTION:
            raise DatasetError(f"{item.source}: {name} covers {mask.mean():.0%} of the image, which is the "
                               "background, not a nucleus: check that 0 (or no object) marks the background")
        if mask.any():
            yield name, mask.astype(bool)


def read_record(root: str | os.PathLike) -> dict | None:
    """The ``dataset.json`` of an imported dataset, or None (the course data and the demo data, or a
    ``dataset.json`` another tool wrote)."""
    path = Path(root) / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None  # not ours: another tool's dataset.json
    ours = isinstance(record, dict) and isinstance(record.get("images"), dict) and "layout" in record
    return record if ours else None


def dataset_pixel_size(root: str | os.PathLike) -> PixelSize:
    """The pixel size of the dataset at ``root``: the median of what its images record (an
    imported dataset), the course's 40x for the course and demo data, or UNKNOWN."""
    record = read_record(root)
    if record is None:
        return COURSE
    sizes = [v["pixel_size_um"] for v in record["images"].values() if v.get("pixel_size_um")]
    if not sizes:
        return UNKNOWN
    um = float(np.median(sizes))
    froms = sorted({v["pixel_size_from"] for v in record["images"].values() if v.get("pixel_size_um")})
    spread = f", {min(sizes):.3g}-{max(sizes):.3g} µm over the images" if max(sizes) > 1.1 * min(sizes) else ""
    return PixelSize(um, f"{' and '.join(froms)}{spread}")


__all__ = ["RECORD_NAME", "dataset_pixel_size", "ImportOptions", "ImportedImage", "empty_folder_or_refuse", "write_import", "read_record"]
