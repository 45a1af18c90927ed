"""Reader and validator for the course dataset layout.

::

    <root>/train/<ID>/images/<ID>.png      one H&E image (RGB)
    <root>/train/<ID>/masks/*.png          one binary mask per nucleus (0/255)
    <root>/test/*.png                      test images
    <root>/test_img_ids.json               COCO-style {"images": [{file_name, id, height, width}]}

``open_dataset`` checks the structure (cheap: folders, names, duplicates,
test_img_ids.json); ``validate_dataset`` decodes every image and mask and checks
sizes and values. Bad input raises ``DatasetError`` naming the file and saying
what to do. Images that are RGBA or greyscale are converted to RGB with a
``DatasetNote`` warning (not an error). An all-zero mask holds no nucleus: it is
skipped with a ``DatasetNote`` warning, and every nucleus count (``read_masks``,
``validate_dataset``, the manifest, the shards) counts only the non-empty masks.
A mask that covers most of its image (inverted: nucleus 0, background 255) is an
error.
"""
from __future__ import annotations

import json
import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from helpers.image_codec import decode_image, mask_box
from helpers.errors import UserError

TEST_IDS_FILE = "test_img_ids.json"
IMPORT_RECORD = "dataset.json"  # an imported dataset's record (helpers/data/imported.py): it has no test split


class DatasetError(UserError, ValueError):
    """Bad input in a dataset folder; the message names the file and says what to do."""


class DatasetNote(UserWarning):
    """Something was fixed on the fly (e.g. an RGBA image converted to RGB)."""


class EmptyMaskError(DatasetError):
    """A mask file with no foreground pixel: it holds no nucleus (readers skip it)."""


# A nucleus is tiny next to its image (at most ~100 px across in 1000x1000): a mask covering more
# than this fraction of the image is the background, i.e. the mask is inverted.
MAX_MASK_FRACTION = 0.5


@dataclass(frozen=True)
class TrainItem:
    image_id: str
    image_path: Path
    mask_paths: tuple[Path, ...]

    @property
    def n_nuclei(self) -> int:
        """Mask files (cheap, no decoding); an all-zero one among them is not a nucleus,
        so the nuclei are at most this many (``nonempty_mask_paths`` counts them)."""
        return len(self.mask_paths)


@dataclass(frozen=True)
class TestItem:
    image_id: str
    file_name: str
    image_path: Path
    coco_id: int
    height: int | None = None
    width: int | None = None


@dataclass
class Dataset:
    root: Path
    train: list[TrainItem]
    test: list[TestItem]
    notes: list[str] = field(default_factory=list)

    @property
    def train_ids(self) -> list[str]:
        return [it.image_id for it in self.train]

    @property
    def test_ids(self) -> list[str]:
        return [it.image_id for it in self.test]

    def item(self, image_id: str) -> TrainItem | TestItem:
        for it in (*self.train, *self.test):
            if it.image_id == image_id:
                return it
        raise KeyError(f"{image_id!r} is not in the dataset at {self.root}")

    def __repr__(self) -> str:
        n = sum(it.n_nuclei for it in self.train)
        return f"Dataset({self.root}, train={len(self.train)} images / {n} masks, test={len(self.test)})"


_SHOWN_NOTES: set[str] = set()  # each note is shown once per process (a notebook's kernel)
_USER_NAMES: dict[str, str] = {}  # a copy's path -> how the user knows it (their own folder or zip)


def name_copy_as(copy: str | os.PathLike, user_name: str, user_prefix: str) -> None:
    """Notes about files under ``copy`` (a temp folder, or the workspace's copy of the user's
    dataset) name the user's own file instead: ``copy`` itself as ``user_name``, a path inside it
    with ``user_prefix`` in place of ``copy/`` (e.g. ``hw3.zip:``)."""
    _USER_NAMES[str(Path(copy)) + os.sep] = user_prefix
    _USER_NAMES[str(Path(copy))] = user_name


def user_paths(msg: str) -> str:
    """``msg`` with every registered copy's paths replaced by the user's own (longest first)."""
    for copy in sorted(_USER_NAMES, key=len, reverse=True):
        msg = msg.replace(copy, _USER_NAMES[copy])
    return msg


def _note(notes: list[str] | None, msg: str) -> None:
    msg = user_paths(msg)
    if notes is not None:
        notes.append(msg)
    if msg not in _SHOWN_NOTES:
        _SHOWN_NOTES.add(msg)
        warnings.warn(msg, DatasetNote, stacklevel=3)


def _is_visible_png(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() == ".png"


# --------------------------------------------------------------------------- structure
def open_dataset(root: str | os.PathLike) -> Dataset:
    """Index a dataset folder in the course layout and check its structure.

    Does not decode pixels (see ``validate_dataset``). Raises ``DatasetError``.
    """
    root = Path(root)
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DatasetError(
            f"{train_dir} not found: a dataset folder must hold train/<ID>/images/<ID>.png and "
            "train/<ID>/masks/*.png; point at the folder that contains train/ (and test/)")
    notes: list[str] = []
    train: list[TrainItem] = []
    seen_lower: dict[str, str] = {}
    for d in sorted(p for p in train_dir.iterdir() if not p.name.startswith(".")):
        if not d.is_dir():
            _note(notes, f"ignoring {d}: train/ should only hold one folder per image")
            continue
        image_id = d.name
        if image_id.lower() in seen_lower:
            raise DatasetError(
                f"duplicate id: {d} and {train_dir / seen_lower[image_id.lower()]} differ only in case; "
                "remove one of them (they would collide on Drive/Windows and in the shards)")
        seen_lower[image_id.lower()] = image_id
        img_dir, mask_dir = d / "images", d / "masks"
        for sub in (img_dir, mask_dir):
            if not sub.is_dir():
                raise DatasetError(
                    f"{sub} is missing: each train/<ID>/ folder needs images/<ID>.png and masks/*.png; "
                    "re-extract the dataset or remove the incomplete folder " + str(d))
        pngs = [p for p in img_dir.iterdir() if _is_visible_png(p)]
        image_path = img_dir / f"{image_id}.png"
        if not image_path.is_file():
            raise DatasetError(
                f"{image_path} not found (images/ holds {[p.name for p in pngs]}); the image must be "
                f"named after its folder: rename it to {image_id}.png")
        if len(pngs) > 1:
            raise DatasetError(
                f"duplicate id: {img_dir} holds {len(pngs)} PNGs ({sorted(p.name for p in pngs)}); "
                f"keep only {image_id}.png")
        masks = sorted(p for p in mask_dir.iterdir() if _is_visible_png(p))
        others = [p.name for p in mask_dir.iterdir() if not p.name.startswith(".") and p not in masks]
        if others:
            _note(notes, f"ignoring {len(others)} non-PNG file(s) in {mask_dir}: {others[:3]}")
        if not masks:
            raise DatasetError(f"{mask_dir} holds no mask PNGs; add one binary mask per nucleus or "
                               f"remove the folder {d}")
        train.append(TrainItem(image_id, image_path, tuple(masks)))
    if not train:
        raise DatasetError(f"{train_dir} holds no image folders; point at the right dataset root")
    test = _read_test_index(root, notes)
    clash = set(it.image_id for it in train) & set(it.image_id for it in test)
    if clash:
        raise DatasetError(
            f"duplicate id: {sorted(clash)} appear in both {train_dir} and {root / 'test'}; "
            "a test image must not also be a training image: remove it from one of them")
    return Dataset(root=root, train=train, test=test, notes=notes)


def _read_test_index(root: Path, notes: list[str]) -> list[TestItem]:
    test_dir, ids_file = root / "test", root / TEST_IDS_FILE
    if not test_dir.is_dir() and not ids_file.exists():
        if not (root / IMPORT_RECORD).is_file():  # your own annotations have no test split, and need no note
            _note(notes, f"{root} has no test/ folder and no {TEST_IDS_FILE}: training data only")
        return []
    if not ids_file.is_file():
        raise DatasetError(f"{ids_file} not found but {test_dir} exists; copy test_img_ids.json from "
                           "the course download into the dataset root")
    if not test_dir.is_dir():
        raise DatasetError(f"{test_dir} not found but {ids_file} exists; copy the test/ folder from the "
                           "course download into the dataset root")
    try:
        spec = json.loads(ids_file.read_text(encoding="utf-8-sig"))  # a BOM (Windows editors) is fine
        entries = spec["images"] if isinstance(spec, dict) else spec
        entries = [(str(e["file_name"]), int(e["id"]), e.get("height"), e.get("width")) for e in entries]
    except (ValueError, KeyError, TypeError) as e:  # UnicodeDecodeError is a ValueError
        raise DatasetError(f"{ids_file} is not valid: expected {{'images': [{{'file_name', 'id', "
                           f"'height', 'width'}}, ...]}} ({e}); re-download it") from e
    names = [n for n, *_ in entries]
    ids = [i for _, i, *_ in entries]
    for what, vals in (("file_name", names), ("id", ids)):
        dup = sorted({str(v) for v in vals if vals.count(v) > 1})
        if dup:
            raise DatasetError(f"duplicate {what} {dup} in {ids_file}; each test image must appear once")
    on_disk = {p.name for p in test_dir.iterdir() if _is_visible_png(p)}
    absent = sorted(set(names) - on_disk)
    if absent:
        raise DatasetError(f"{ids_file} names {absent} but they are not in {test_dir}; "
                           "copy the missing test images there or fix the json")
    missing = sorted(on_disk - set(names))
    if missing:
        raise DatasetError(f"{ids_file} misses test image(s) {missing} found in {test_dir}; "
                           "add them to the json (with their COCO id) or remove the files")
    return [TestItem(Path(n).stem, n, test_dir / n, i, h, w) for n, i, h, w in entries]


# --------------------------------------------------------------------------- pixels
def decode_rgb(path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Any PNG, JPEG or TIFF as uint8 HxWx3 RGB, and what was converted on the way: an alpha
    channel dropped, greyscale repeated into RGB, more than 8 bits scaled by the image's maximum.
    Raises FileNotFoundError, or ValueError when the file cannot be decoded; each caller words
    it for its user (:func:`read_image` for the dataset, notebook 06 for your own images)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    with Image.open(path) as im:  # the header only: its mode (a palette says nothing in the pixels)
        mode = im.mode
    raw = decode_image(path.read_bytes())
    notes = [] if mode in ("RGB", "RGBA", "L", "I;16", "I;16B", "I;16L", "I", "F") else [f"{mode}: converted to RGB"]
    if raw.dtype != np.uint8:
        top = float(raw.max()) or 1.0
        notes.append(f"{raw.dtype} scaled to 8 bits (its maximum {top:g} -> 255)")
        raw = np.clip(raw.astype(np.float64) * (255.0 / top), 0, 255).round().astype(np.uint8)
    if raw.ndim == 2:
        notes.append("greyscale: repeated into RGB")
        return np.ascontiguousarray(np.repeat(raw[..., None], 3, axis=2)), notes
    if raw.shape[2] == 4:
        notes.append("RGBA: the alpha channel is dropped")
    return np.ascontiguousarray(raw[..., :3]), notes


def read_image(path: str | os.PathLike, notes: list[str] | None = None) -> np.ndarray:
    """Decode a dataset image to uint8 HxWx3 RGB (:func:`decode_rgb`).

    What was converted (RGBA, greyscale, 16-bit) is a ``DatasetNote`` warning naming the file.
    A missing, corrupt or truncated file raises ``DatasetError``.
    """
    path = Path(path)
    _refuse_other_format(path)
    try:
        arr, conversions = decode_rgb(path)
    except FileNotFoundError:
        raise DatasetError(f"{path} not found; re-extract the dataset") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path} is corrupt or truncated ({e}); replace it with a good copy "
                           "(re-download or re-extract the dataset)") from e
    for c in conversions:
        _note(notes, f"{path} is not 8-bit RGB: {c}")
    return arr




def _refuse_other_format(path: Path) -> None:
    """DatasetError for a dataset file named ``.png`` that holds another format (a JPEG renamed):
    libraries decode JPEG differently, so the shards could not be verified against it."""
    if path.suffix.lower() != ".png" or not path.is_file():
        return
    with open(path, "rb") as f:
        head = f.read(8)
    kind = "JPEG" if head[:3] == b"\xff\xd8\xff" else "TIFF" if head[:4] in (b"II*\x00", b"MM\x00*") else None
    if kind:  # anything else that is not PNG is corrupt: the decoder says so
        raise DatasetError(f"{path} is named .png but holds {kind} data: save it as a real PNG (lossless; "
                           "e.g. PIL.Image.open(p).save(p)) and run notebook 01 again")


def _decode_gray(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path} not found; re-extract the dataset")
    _refuse_other_format(path)
    try:
        m = decode_image(path.read_bytes())
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path} is corrupt or truncated ({e}); replace it with a good copy "
                           "(re-download or re-extract the dataset)") from e
    return m[..., :3] if m.ndim == 3 else m  # colour: channel order does not matter for the checks


def read_mask(path: str | os.PathLike, shape: Sequence[int] | None = None) -> np.ndarray:
    """Decode one nucleus mask to a bool HxW array, checking it.

    A mask must be single-valued (0 and one other value, normally 255), not empty
    (``EmptyMaskError``, which readers catch to skip the file), cover at most half
    of its image (else it is inverted), and (if ``shape`` is given) be the size of
    its image. Raises ``DatasetError``.
    """
    path = Path(path)
    m = _decode_gray(path)
    if m.ndim == 3:
        if not all(np.array_equal(m[..., 0], m[..., c]) for c in range(1, m.shape[2])):
            raise DatasetError(f"{path} is a colour image, not a binary mask; save it as a "
                               "single-channel 0/255 PNG")
        m = m[..., 0]
    if shape is not None and tuple(m.shape) != tuple(shape[:2]):
        raise DatasetError(f"{path} is {m.shape[1]}x{m.shape[0]} (WxH) but its image is "
                           f"{shape[1]}x{shape[0]}; masks must match the image size: fix or remove it")
    nz = int(np.count_nonzero(m))
    if nz == 0:
        raise EmptyMaskError(f"{path} is empty (no foreground pixel): it holds no nucleus, so the dataset "
                             "readers skip it and count only non-empty masks")
    if nz > MAX_MASK_FRACTION * m.size:
        raise DatasetError(f"{path} covers {100 * nz / m.size:.0f}% of its image: it looks inverted (nucleus 0, "
                           "background 255). Invert it in your dataset source (mask = 255 - mask), or remove it "
                           "if it is no nucleus, and run again")
    # value checks on the bounding box only (a nucleus is tiny next to the image)
    y0, x0, y1, x1 = mask_box(m)
    crop = m[y0:y1, x0:x1]
    top = crop.max()
    if int(np.count_nonzero(crop == top)) != nz:
        vals = np.unique(m)
        raise DatasetError(f"{path} is not binary (values {vals[:6].tolist()}{'...' if len(vals) > 6 else ''}); "
                           "masks must be 0 for background and one value (255) for the nucleus: "
                           "threshold it, e.g. mask = (mask > 127) * 255")
    out = np.zeros(m.shape, dtype=bool)
    out[y0:y1, x0:x1] = crop == top
    return out


def warn_empty_masks(paths: Sequence[Path], notes: list[str] | None = None) -> None:
    """One ``DatasetNote`` for the all-zero masks of one image folder."""
    if paths:
        names = [Path(p).name for p in paths]
        _note(notes, f"skipping {len(names)} empty mask(s) in {Path(paths[0]).parent} (no foreground pixel, "
                     f"no nucleus): {names[:5]}{'...' if len(names) > 5 else ''}; they are not counted as "
                     "nuclei (delete them from your dataset source to silence this)")


def mask_digest(mask: np.ndarray) -> str:
    """The identity of a mask's pixels (two files of the same nucleus have the same)."""
    return hashlib.sha1(np.packbits(mask, axis=None).tobytes()).hexdigest()


def refuse_duplicate_masks(paths: Sequence[Path], digests: Sequence[str | None]) -> None:
    """:class:`DatasetError` naming the mask files of one image that hold the same pixels: each
    would be a second, identical nucleus."""
    first: dict[str, Path] = {}
    for path, digest in zip(paths, digests):
        if digest is None:
            continue
        if digest in first:
            raise DatasetError(f"{path} holds the same nucleus as {first[digest].name} (identical pixels): one "
                               "nucleus would count twice. Delete one of the two files from your dataset source.")
        first[digest] = Path(path)


def nonempty_mask_paths(paths: Sequence[Path], shape: Sequence[int] | None = None,
                        workers: int | None = None) -> tuple[list[Path], list[Path]]:
    """``(non-empty, empty)`` mask files, in order; decodes (and checks) every mask, and refuses
    two files of the same nucleus (:func:`refuse_duplicate_masks`)."""
    def one(p: Path) -> str | None:
        try:
            return mask_digest(read_mask(p, shape))
        except EmptyMaskError:
            return None

    digests = _map(one, paths, workers)
    refuse_duplicate_masks(paths, digests)
    return [p for p, d in zip(paths, digests) if d], [p for p, d in zip(paths, digests) if not d]


def read_masks(item: TrainItem, shape: Sequence[int] | None = None, workers: int | None = None,
               notes: list[str] | None = None) -> np.ndarray:
    """The nuclei of a training item as a bool array (N, H, W), in mask file order.

    All-zero mask files are skipped with a ``DatasetNote`` warning (N counts the others).
    """
    if shape is None:
        with Image.open(item.image_path) as im:
            shape = (im.height, im.width)
    paths = item.mask_paths
    out = np.empty((len(paths), shape[0], shape[1]), dtype=bool)
    empty = np.zeros(len(paths), bool)
    digests: list[str | None] = [None] * len(paths)

    def one(i: int) -> None:
        try:
            out[i] = read_mask(paths[i], shape)
            digests[i] = mask_digest(out[i])
        except EmptyMaskError:
            empty[i] = True

    _map(one, range(len(paths)), workers)
    refuse_duplicate_masks(paths, digests)
    if empty.any():
        warn_empty_masks([p for p, e in zip(paths, empty) if e], notes)
        out = out[~empty]
    return out


def mask_batches(item: TrainItem, shape: Sequence[int], batch: int = 64) -> Iterable[tuple[list[Path], np.ndarray]]:
    """The item's non-empty masks as ``(paths, (n, H, W) bool)`` batches in file order, never all
    at once (the densest course image's 1,862 masks are 1.9 GB together); empty masks skipped with
    a note, two of the same pixels refused, as :func:`read_masks` does."""
    def one(p: Path):
        try:
            return read_mask(p, shape)
        except EmptyMaskError:
            return None

    seen: dict[str, Path] = {}
    empty: list[Path] = []
    for s in range(0, len(item.mask_paths), batch):
        paths = item.mask_paths[s:s + batch]
        masks = _map(one, paths, None)
        empty += [p for p, m in zip(paths, masks) if m is None]
        for p, m in zip(paths, masks):
            if m is not None:
                d = mask_digest(m)
                if d in seen:
                    refuse_duplicate_masks([seen[d], p], [d, d])
                seen[d] = p
        kept = [(p, m) for p, m in zip(paths, masks) if m is not None]
        if kept:
            yield [p for p, _ in kept], np.stack([m for _, m in kept])
    warn_empty_masks(empty)


def _map(fn, items: Iterable, workers: int | None) -> list:
    workers = workers or min(4, os.cpu_count() or 1)
    items = list(items)
    if workers <= 1 or len(items) < 8:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(fn, items))


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) from the PNG header, without decoding; DatasetError if unreadable."""
    try:
        with Image.open(path) as im:
            return im.height, im.width
    except FileNotFoundError:
        raise DatasetError(f"{path} not found; re-extract the dataset") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path} is corrupt or not an image ({e}); replace it with a good copy") from e


def check_test_size(root: str | os.PathLike, item: TestItem, size: Sequence[int] | None = None) -> None:
    """DatasetError if ``test_img_ids.json`` gives ``item`` another height/width than its image has.

    answer.json takes each test image's size from that json, so a wrong entry would only
    show up when the submission is built; ``size`` defaults to the PNG header's.
    """
    h, w = size if size is not None else image_size(item.image_path)
    if item.height is None and item.width is None:
        return
    if (item.height, item.width) != (h, w):
        raise DatasetError(
            f"{Path(root) / TEST_IDS_FILE} says {item.file_name} is {item.width}x{item.height} (width x height) but "
            f"{item.image_path} is {w}x{h}: submissions take the size from this json, so fix that entry "
            f"(\"height\": {h}, \"width\": {w}) in your dataset source (or put back the right image), then run "
            "notebook 01 again")


@dataclass(frozen=True)
class ImageStats:
    image_id: str
    split: str  # "train" (labeled) or "test"
    n_nuclei: int
    height: int
    width: int


def validate_dataset(ds: Dataset | str | os.PathLike, progress: bool = True,
                     workers: int | None = None) -> dict[str, ImageStats]:
    """Decode every image and mask and check them; return stats per image id.

    Checks: images decode (RGBA/greyscale -> converted with a note), masks decode,
    match their image size, are binary and not inverted; all-zero masks are skipped
    with a note and not counted (``ImageStats.n_nuclei`` counts the non-empty ones);
    test images match the height/width in test_img_ids.json. Raises ``DatasetError``
    on the first problem.
    """
    from helpers.progress import tqdm

    if not isinstance(ds, Dataset):
        ds = open_dataset(ds)
    stats: dict[str, ImageStats] = {}
    total = sum(it.n_nuclei for it in ds.train) + len(ds.test)
    bar = tqdm(total=total, desc="validate dataset", unit="file", disable=not progress)
    try:
        for it in ds.train:
            img = read_image(it.image_path, ds.notes)
            h, w = img.shape[:2]

            kept, empty = nonempty_mask_paths(it.mask_paths, (h, w), workers)
            warn_empty_masks(empty, ds.notes)
            bar.update(it.n_nuclei)
            stats[it.image_id] = ImageStats(it.image_id, "train", len(kept), h, w)
        for it in ds.test:
            img = read_image(it.image_path, ds.notes)
            h, w = img.shape[:2]
            check_test_size(ds.root, it, (h, w))
            bar.update(1)
            stats[it.image_id] = ImageStats(it.image_id, "test", 0, h, w)
    finally:
        bar.close()
    return stats
