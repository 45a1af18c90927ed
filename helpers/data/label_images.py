"""Image + instance-label pairs, as StarDist and Cellpose keep them, read and written.

``<root>/images/`` and ``<root>/labels/`` (or ``masks/``) hold files of the same name (any
suffix, subfolders too), PNG or TIFF: a label image is 0 for background and 1..N for the nuclei,
8, 16 or 32 bits. :func:`read_label_pairs` yields them for :func:`~helpers.data.imported.write_import`;
:func:`export_label_pairs` writes a course-layout dataset this way.

Named with the file and what to do (:class:`DatasetError`): a label image of another size than its
image, labels that are not whole numbers, colour or negative, an image without a label image or a
label image without its image. A label image with no nucleus is skipped with a note.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

from helpers.data.dataset import DatasetError, decode_rgb
from helpers.data.imported import ImportedImage, ImportOptions, safe_name
from helpers.data.organs import organ_of
from helpers.image_codec import encode_png
from helpers.pixel_size import read_pixel_size, tiff_resolution

LABEL_DIRS = ("labels", "masks")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")


def holds_label_pairs(root: Path) -> bool:
    return (root / "images").is_dir() and any((root / d).is_dir() for d in LABEL_DIRS)


def _files(folder: Path) -> dict[str, Path]:
    """{path under ``folder`` without its suffix: file} of the images in ``folder``, subfolders too;
    a DatasetError names two files of one name under two suffixes (which one is meant?)."""
    found: dict[str, Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts) \
                and p.suffix.lower() in IMAGE_SUFFIXES:
            key = p.relative_to(folder).with_suffix("").as_posix()
            if key in found:
                raise DatasetError(f"{found[key]} and {p} are one name under two suffixes: keep one of them")
            found[key] = p
    return found


def label_pairs(root: str | os.PathLike) -> list[tuple[Path, Path]]:
    """``(image, label image)`` of every image under ``root/images`` (by path and stem); a
    DatasetError names an image without its label image, or a label image without its image."""
    root = Path(root)
    if not holds_label_pairs(root):
        raise DatasetError(f"{root} holds no images/ beside a labels/ (or masks/) folder: the label-pair layout "
                           "keeps each image in images/ and its label image, of the same name, in labels/")
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


def read_image_file(path: Path) -> tuple[np.ndarray, list[str]]:
    """An annotated image as 8-bit RGB, with notes on what was converted; a DatasetError names it."""
    try:
        image, conversions = decode_rgb(path)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path} cannot be read as an image ({e})") from e
    return image, [f"{path} is not 8-bit RGB: {c}" for c in conversions]


def image_id_of(root: Path, path: Path) -> str:
    """An image's id: its path under ``root`` without the suffix, folders joined by ``__``."""
    return safe_name("__".join(path.relative_to(root).with_suffix("").parts))


def group_of(root: Path, path: Path) -> str:
    """The group a split is stratified by: the TCGA organ, else the image's first folder under ``root``."""
    organ = organ_of(path.stem)
    parts = path.relative_to(root).parts
    return organ if organ != "unknown" else (parts[0] if len(parts) > 1 else "")


def read_label_pairs(root: str | os.PathLike, options: ImportOptions = ImportOptions()) -> Iterator[ImportedImage]:
    """The pairs under ``root``, one :class:`ImportedImage` at a time (no option applies to them)."""
    root = Path(root)
    for image_path, label_path in label_pairs(root):
        image, notes = read_image_file(image_path)
        labels = read_label_image(label_path, image.shape)
        size = read_pixel_size(image_path)
        labels = _instances(labels, label_path, notes)
        yield ImportedImage(image_id_of(root / "images", image_path), image_path, image,
                            _nuclei(labels, label_path), size if size.um else read_pixel_size(label_path),
                            group_of(root / "images", image_path), notes)


def _instances(labels: np.ndarray, label_path: Path, notes: list[str]) -> np.ndarray:
    """``labels``, or, for a binary mask (one value over several separate regions), its regions
    numbered apart, with a note: a binary mask outlines nuclei but does not tell touching ones apart."""
    from scipy import ndimage

    values = np.unique(labels[labels > 0])
    if len(values) != 1:
        return labels
    regions, n = ndimage.label(labels > 0)
    if n > 1:
        notes.append(f"{label_path} holds one value ({int(values[0])}) over {n} separate regions: a binary mask, "
                     "not instance labels; each region is taken as a nucleus, and touching nuclei stay one (save "
                     "instance labels, 1..N, to keep them apart)")
        return regions
    return labels


def _nuclei(labels: np.ndarray, label_path: Path):
    for label in np.unique(labels[labels > 0]):
        yield f"label {int(label)} of {label_path.name}", labels == label


def export_label_pairs(dataset_root: str | os.PathLike, out: str | os.PathLike,
                       pixel_size_um: float | None = None) -> Path:
    """The training images of a course-layout dataset as label pairs under ``out``:
    ``images/<ID>.png`` and ``labels/<ID>.tif`` (uint16, uint32 past 65,535 nuclei; where masks
    overlap, the later mask file's label wins, so such a pixel keeps one nucleus). A known
    ``pixel_size_um`` goes into the label TIFF's resolution tags."""
    import tifffile

    from helpers.data.dataset import mask_batches, open_dataset, read_image

    ds, out = open_dataset(dataset_root), Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    for item in ds.train:
        image = read_image(item.image_path)
        labels = np.zeros(image.shape[:2], np.uint32 if len(item.mask_paths) > 65535 else np.uint16)
        masks = (m for _, batch in mask_batches(item, image.shape) for m in batch)
        for k, mask in enumerate(masks, start=1):
            labels[mask] = k
        (out / "images" / f"{item.image_id}.png").write_bytes(encode_png(image))
        tifffile.imwrite(out / "labels" / f"{item.image_id}.tif", labels, compression="zlib",
                         **tiff_resolution(pixel_size_um))
    return out


__all__ = ["LABEL_DIRS", "holds_label_pairs", "label_pairs", "read_label_image", "read_image_file", "image_id_of",
           "group_of", "read_label_pairs", "export_label_pairs"]
