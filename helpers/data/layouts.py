"""Annotation layouts besides the course's, read into the course layout.

Notebook 01 checks, splits and shards one layout, the course's (``helpers/data/dataset.py``).
The field keeps its annotations in others; each is imported into a course-layout folder once
(:func:`import_dataset`), and from there everything is the same:

* ``course``: ``train/<ID>/images/<ID>.png`` and ``train/<ID>/masks/*.png``;
* ``labels``: image + instance-label pairs, as StarDist and Cellpose keep them: ``images/`` and
  ``labels/`` (or ``masks/``) holding files of the same name (any suffix), PNG or TIFF; a label
  image is 0 for background and 1..N for the nuclei, 8, 16 or 32 bits.

Bad annotations are named with the file and what to do (:class:`DatasetError`): a label image of
another size than its image, labels that are not whole numbers, an image without a label image or
a label image without its image. A label image with no nucleus is skipped with a note. Nothing
of the source is changed: the import writes a new folder, whole or not at all.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from helpers.data.dataset import DatasetError, _note, decode_rgb
from helpers.image_codec import encode_png

LAYOUTS = ("course", "labels")
LABEL_DIRS = ("labels", "masks")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def detect_layout(root: str | os.PathLike) -> str:
    """Which of :data:`LAYOUTS` the folder ``root`` holds; a DatasetError naming what it found."""
    root = Path(root)
    if (root / "train").is_dir():
        return "course"
    if (root / "images").is_dir() and any((root / d).is_dir() for d in LABEL_DIRS):
        return "labels"
    found = sorted(p.name for p in root.iterdir())[:8] if root.is_dir() else []
    raise DatasetError(f"{root} holds none of the layouts notebook 01 reads (found {found}): the course's "
                       "train/<ID>/images + train/<ID>/masks, or images/ + labels/ (label images of the "
                       "same names)")


def _files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES}


def label_pairs(root: str | os.PathLike) -> list[tuple[Path, Path]]:
    """``(image, label image)`` of every image under ``root/images`` (by file stem); a
    DatasetError names an image without its label image, or a label image without its image."""
    root = Path(root)
    label_dir = next(root / d for d in LABEL_DIRS if (root / d).is_dir())
    images, labels = _files(root / "images"), _files(label_dir)
    alone = sorted(set(images) - set(labels))
    if alone:
        raise DatasetError(f"{len(alone)} image(s) in {root / 'images'} have no label image in {label_dir} "
                           f"(e.g. {images[alone[0]].name}): add the label image of the same name, or move the "
                           "image out if it is not annotated")
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise DatasetError(f"{len(orphans)} label image(s) in {label_dir} have no image in {root / 'images'} "
                           f"(e.g. {labels[orphans[0]].name}): add the image of the same name, or move the "
                           "label image out")
    if not images:
        raise DatasetError(f"{root / 'images'} holds no image (PNG, TIFF or JPEG)")
    return [(images[s], labels[s]) for s in sorted(images)]


def read_label_image(path: str | os.PathLike, shape=None) -> np.ndarray:
    """A label image as an int64 (H, W) array: 0 background, 1..N nuclei. A DatasetError names
    a file that is not one: colour, not whole numbers, negative, or of another size than
    ``shape`` (its image's)."""
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            labels = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                labels = np.asarray(im)
    except Exception as e:  # noqa: BLE001 - any decoder's complaint is a bad file
        raise DatasetError(f"{path} cannot be read as a label image ({type(e).__name__}: {e})") from e
    labels = np.squeeze(labels)
    if labels.ndim != 2:
        raise DatasetError(f"{path} has shape {labels.shape}: a label image is one channel, 0 for background "
                           "and 1..N for the nuclei (save the instance labels, not a colour rendering)")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.round(labels)):
            raise DatasetError(f"{path} holds values that are not whole numbers ({labels.dtype}): a label "
                               "image gives each nucleus a whole number; save it as 16- or 32-bit integers")
    labels = labels.astype(np.int64)
    if labels.min() < 0:
        raise DatasetError(f"{path} holds negative labels: 0 is background, 1..N the nuclei")
    if shape is not None and tuple(labels.shape) != tuple(shape[:2]):
        raise DatasetError(f"{path} is {labels.shape[1]}x{labels.shape[0]} (WxH) but its image is "
                           f"{shape[1]}x{shape[0]}: a label image must be the size of its image")
    return labels


def import_label_pairs(root: str | os.PathLike, out: str | os.PathLike,
                       notes: list[str] | None = None) -> Path:
    """Write the ``labels`` layout under ``root`` as a course-layout folder ``out`` (train only):
    the image as PNG, one binary mask PNG per label. Written into a temp folder, then renamed."""
    root, out = Path(root), Path(out)
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out} already exists and is not empty; nothing was overwritten: import into a new "
                           "folder, or remove it yourself")
    pairs = label_pairs(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        for image_path, label_path in pairs:
            _import_pair(image_path, label_path, tmp / "train", notes)
        if not (tmp / "train").is_dir():
            raise DatasetError(f"no label image under {root} holds a nucleus: nothing to train on")
        if out.exists():  # an empty folder: rename onto it
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _import_pair(image_path: Path, label_path: Path, train: Path, notes) -> None:
    try:
        image, conversions = decode_rgb(image_path)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{image_path} cannot be read as an image ({e})") from e
    for c in conversions:
        _note(notes, f"{image_path} is not 8-bit RGB: {c}")
    labels = read_label_image(label_path, image.shape)
    ids = np.unique(labels[labels > 0])
    if not ids.size:
        _note(notes, f"skipping {image_path.name}: its label image {label_path} holds no nucleus")
        return
    folder = train / image_path.stem
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    (folder / "images" / f"{image_path.stem}.png").write_bytes(encode_png(image))
    for k, label in enumerate(ids, start=1):
        mask = ((labels == label) * np.uint8(255)).astype(np.uint8)
        (folder / "masks" / f"mask_{k:04d}.png").write_bytes(encode_png(mask))


def export_label_pairs(dataset_root: str | os.PathLike, out: str | os.PathLike) -> Path:
    """The training images of a course-layout dataset as the ``labels`` layout under ``out``:
    ``images/<ID>.png`` and ``labels/<ID>.tif`` (uint16, uint32 past 65,535 nuclei; where masks
    overlap, the later mask file's label wins, so such a pixel keeps one nucleus)."""
    import tifffile

    from helpers.data.dataset import open_dataset, read_image, read_masks

    ds, out = open_dataset(dataset_root), Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    for item in ds.train:
        image = read_image(item.image_path)
        masks = read_masks(item, image.shape)
        labels = np.zeros(image.shape[:2], np.uint32 if len(masks) > 65535 else np.uint16)
        for k, mask in enumerate(masks, start=1):
            labels[mask] = k
        (out / "images" / f"{item.image_id}.png").write_bytes(encode_png(image))
        tifffile.imwrite(out / "labels" / f"{item.image_id}.tif", labels, compression="zlib")
    return out


def import_dataset(root: str | os.PathLike, out: str | os.PathLike, layout: str = "",
                   notes: list[str] | None = None) -> Path:
    """The course-layout folder of the dataset under ``root``: ``root`` itself in the course
    layout, else its import into ``out``. ``layout`` names it ("" detects it)."""
    layout = layout or detect_layout(root)
    if layout not in LAYOUTS:
        raise DatasetError(f"layout {layout!r} is not one of {LAYOUTS}")
    if layout == "course":
        return Path(root)
    return import_label_pairs(root, out, notes)


__all__ = ["LAYOUTS", "detect_layout", "label_pairs", "read_label_image", "import_label_pairs",
           "export_label_pairs", "import_dataset"]
