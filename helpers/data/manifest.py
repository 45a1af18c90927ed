"""data_manifest.csv: one row per image of a dataset, and checks against it.

Columns: image_id, split (train / val / test), organ, n_nuclei, height, width,
sha256 (of the image file), shard (file name of the TFRecord that holds it).

* ``build_manifest(root)`` regenerates the rows from a dataset folder.
* ``write_manifest`` / ``read_manifest`` store them as CSV (written atomically).
* ``validate_against_manifest(root, rows)`` checks a dataset folder against them, one image
  at a time with ``check_image`` and ``check_nuclei`` (the shard writer checks with them too).
* ``choose_val_split`` picks the default validation images; ``split_ids(rows,
  "train", "val")`` gives train+val for the final model.

Default validation split (deterministic, stratified by organ): ``n_val`` images
(default: one per 6 labeled images, at least 1; 4 for the 24 real images),
one image per organ, taken from the organs with the most labeled images (ties:
organ name). Only organs with at least 2 labeled images are eligible, so every
organ keeps a training image. Inside an organ the image is chosen by a seeded
hash of its id (``sha256(f"{seed}:{image_id}")``, smallest wins), so the choice
does not depend on file order and changes only when the seed does. If ``n_val``
exceeds the number of eligible organs, the next round takes a second image
from each organ in the same order (while it keeps one for training).
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from helpers.errors import InvalidRequest
from helpers.atomic import atomic_write_text
from helpers.data.dataset import (DatasetError, check_test_size, image_size, nonempty_mask_paths, open_dataset,
                             validate_dataset, warn_empty_masks)
from helpers.data.organs import UNKNOWN, organ_of

COLUMNS = ("image_id", "split", "organ", "n_nuclei", "height", "width", "sha256", "shard")
INT_COLUMNS = ("n_nuclei", "height", "width")
SPLITS = ("train", "val", "test")
MANIFEST_NAME = "data_manifest.csv"
WORKSPACE_MANIFEST = "manifest.csv"  # <workspace>/data/manifest.csv: the manifest with the chosen split
REPO_MANIFEST = Path(__file__).resolve().parents[2] / MANIFEST_NAME

LABELED_POOL, TEST_POOL = "labeled", "test"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- shard names
def pool_of(split: str) -> str:
    """Shard pool of a split: ``labeled`` for train/val (so val can change freely), else ``test``."""
    return TEST_POOL if split == "test" else LABELED_POOL


def shard_file_name(pool: str, organ: str, k: int, n: int) -> str:
    return f"{pool}-{organ}-{k:05d}-of-{n:05d}.tfrecord"


def assign_shards(rows: list[dict]) -> list[dict]:
    """Fill the ``shard`` column: one image per file, numbered within (pool, organ) by image_id."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in rows:
        groups[(pool_of(r["split"]), r["organ"])].append(r["image_id"])
    names = {}
    for (pool, organ), ids in groups.items():
        for k, image_id in enumerate(sorted(ids)):
            names[image_id] = shard_file_name(pool, organ, k, len(ids))
    return [{**r, "shard": names[r["image_id"]]} for r in rows]


# --------------------------------------------------------------------------- splits
def split_ids(rows: Iterable[dict], *splits: str) -> list[str]:
    """Image ids whose split is one of ``splits`` (e.g. ``split_ids(rows, "train", "val")``)."""
    bad = set(splits) - set(SPLITS)
    if bad:
        raise InvalidRequest(f"unknown split(s) {sorted(bad)}; use {SPLITS}")
    return [r["image_id"] for r in rows if r["split"] in splits]


def _rank(seed: int, image_id: str) -> str:
    return hashlib.sha256(f"{seed}:{image_id}".encode()).hexdigest()


def choose_val_split(rows: Iterable[dict], n_val: int | None = None, seed: int = 0) -> list[str]:
    """Default validation ids: stratified by organ, deterministic (see module doc)."""
    labeled = [r for r in rows if r["split"] in ("train", "val")]
    by_organ: dict[str, list[str]] = defaultdict(list)
    for r in labeled:
        by_organ[r["organ"]].append(r["image_id"])
    if n_val is None:
        n_val = max(1, round(len(labeled) / 6))
    order = sorted((o for o in by_organ if len(by_organ[o]) >= 2), key=lambda o: (-len(by_organ[o]), o))
    queues = {o: sorted(by_organ[o], key=lambda i: _rank(seed, i)) for o in order}
    chosen: list[str] = []
    taken: Counter = Counter()
    while len(chosen) < n_val:
        progressed = False
        for o in order:
            if len(chosen) >= n_val:
                break
            if len(queues[o]) - taken[o] >= 2:  # keep >= 1 training image per organ
                chosen.append(queues[o][taken[o]])
                taken[o] += 1
                progressed = True
        if not progressed:
            break
    return sorted(chosen)


def set_val_split(rows: Iterable[dict], val_ids: Iterable[str]) -> list[dict]:
    """Rows with ``val_ids`` as val and the other labeled images as train (test untouched)."""
    rows = list(rows)
    val_ids = set(val_ids)
    labeled = {r["image_id"] for r in rows if r["split"] in ("train", "val")}
    unknown = val_ids - labeled
    if unknown:
        raise InvalidRequest(f"validation ids {sorted(unknown)} are not labeled images of this manifest")
    out = []
    for r in rows:
        split = r["split"] if r["split"] == "test" else ("val" if r["image_id"] in val_ids else "train")
        out.append({**r, "split": split})
    return out


# --------------------------------------------------------------------------- build / io
def build_manifest(root: str | os.PathLike, val_ids: Iterable[str] | None = None, n_val: int | None = None,
                   seed: int = 0, check_pixels: bool = True, progress: bool = True,
                   groups: dict[str, str] | None = None) -> list[dict]:
    """Rows for every image of the dataset at ``root`` (train images first, then test).

    ``n_nuclei`` counts the non-empty masks (an all-zero mask holds no nucleus and
    is skipped with a warning). ``check_pixels`` checks every image and mask
    (``validate_dataset``); otherwise sizes come from the PNG headers and masks are
    decoded only to count the non-empty ones. The validation
    split is ``val_ids`` if given, else ``choose_val_split(rows, n_val, seed)``. The ``organ``
    column, the group a split is stratified by, is the TCGA organ where the id says it, else
    ``groups[image_id]`` (an imported dataset's folder or column), else ``unknown``.
    """
    ds = open_dataset(root)
    if check_pixels:
        stats = {k: (s.n_nuclei, s.height, s.width) for k, s in validate_dataset(ds, progress=progress).items()}
    else:
        stats = {}
        for it in ds.train:
            h, w = image_size(it.image_path)
            kept, empty = nonempty_mask_paths(it.mask_paths, (h, w))
            warn_empty_masks(empty, ds.notes)
            stats[it.image_id] = (len(kept), h, w)
        stats.update({it.image_id: (0, *image_size(it.image_path)) for it in ds.test})
    rows = []
    for it, split in [(it, "train") for it in ds.train] + [(it, "test") for it in ds.test]:
        n, h, w = stats[it.image_id]
        rows.append({"image_id": it.image_id, "split": split, "organ": _group(it.image_id, groups),
                     "n_nuclei": n, "height": h, "width": w, "sha256": sha256_file(it.image_path),
                     "shard": ""})
    rows = set_val_split(rows, choose_val_split(rows, n_val, seed) if val_ids is None else val_ids)
    return assign_shards(rows)


def _group(image_id: str, groups: dict[str, str] | None) -> str:
    organ = organ_of(image_id)
    return groups.get(image_id) or organ if groups and organ == UNKNOWN else organ


def manifest_csv(rows: Iterable[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r[k] for k in COLUMNS})
    return buf.getvalue()


def write_manifest(rows: Iterable[dict], path: str | os.PathLike) -> Path:
    """Write the rows as CSV, atomically (temp file + rename)."""
    return atomic_write_text(path, manifest_csv(rows))


def read_manifest(path: str | os.PathLike = REPO_MANIFEST) -> list[dict]:
    """Rows of a manifest CSV (ints for n_nuclei/height/width); DatasetError if malformed."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} not found; regenerate it with helpers.data.manifest.build_manifest "
                           "and write_manifest, or use the committed data_manifest.csv")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"{path} lacks column(s) {sorted(missing)}; regenerate it with build_manifest")
        rows = []
        for i, r in enumerate(reader, start=2):
            try:
                row = {k: r[k] for k in COLUMNS}
                for k in INT_COLUMNS:
                    row[k] = int(row[k])
            except (TypeError, ValueError) as e:
                raise DatasetError(f"{path} line {i} is malformed ({e}); regenerate the manifest") from e
            if row["split"] not in SPLITS:
                raise DatasetError(f"{path} line {i}: split {row['split']!r} is not one of {SPLITS}")
            rows.append(row)
    ids = [r["image_id"] for r in rows]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DatasetError(f"{path} lists duplicate id(s) {dup}; each image must appear once")
    return rows


def workspace_manifest(ws) -> list[dict]:
    """The manifest with the split chosen in notebook 01 (for notebooks 02-05), from workspace ``ws``."""
    path = ws.data / WORKSPACE_MANIFEST
    if not path.is_file():
        raise DatasetError(f"{path} not found: run notebook 01 (prepare shards) first")
    return read_manifest(path)


def summarize(rows: Iterable[dict]) -> dict:
    """Counts for notebooks and tests: images and nuclei per split, images per
    organ and split, nuclei per organ (labeled images)."""
    rows = list(rows)
    images, nuclei, organ_nuclei = Counter(), Counter(), Counter()
    organs: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        images[r["split"]] += 1
        nuclei[r["split"]] += r["n_nuclei"]
        organs[r["organ"]][r["split"]] += 1
        organ_nuclei[r["organ"]] += r["n_nuclei"]
    return {"images": dict(images), "nuclei": dict(nuclei),
            "organs": {o: dict(c) for o, c in sorted(organs.items())},
            "organ_nuclei": dict(sorted(organ_nuclei.items()))}


# --------------------------------------------------------------------------- validate
def check_image(it, r: dict) -> tuple[int, int]:
    """DatasetError unless the image file of dataset item ``it`` is the one manifest row ``r``
    describes (sha256, then size from the PNG header); returns its (height, width)."""
    digest = sha256_file(it.image_path)
    if digest != r["sha256"]:
        raise DatasetError(f"{it.image_path}: sha256 {digest[:12]}... does not match the manifest "
                           f"({r['sha256'][:12]}...); the file differs from the reference dataset: "
                           "re-acquire it, or regenerate the manifest if the change is intended")
    h, w = image_size(it.image_path)
    if (h, w) != (r["height"], r["width"]):
        raise DatasetError(f"{it.image_path} is {w}x{h} but the manifest says {r['width']}x{r['height']}")
    return h, w


def check_nuclei(it, r: dict, empty: Sequence[Path] = ()) -> None:
    """DatasetError unless dataset item ``it`` holds the nuclei manifest row ``r`` counts: its mask
    files less ``empty``, the all-zero ones among them (no nucleus), if known."""
    kept = len(getattr(it, "mask_paths", ())) - len(empty)
    if kept == r["n_nuclei"]:
        return
    held = (f"{kept} non-empty masks ({len(empty)} empty one(s) skipped: {[Path(q).name for q in empty[:3]]})"
            if len(empty) else f"{kept} masks")
    raise DatasetError(
        f"{Path(it.image_path).parent.parent / 'masks'} holds {held} but the manifest says {r['n_nuclei']}: "
        "the dataset differs from the one the manifest describes. Re-acquire the original dataset, or, if "
        "your data is meant to be this way, rebuild the manifest from it (helpers.data.manifest.build_manifest "
        "+ write_manifest) and pass it as manifest_path")


def validate_against_manifest(root: str | os.PathLike, rows: Iterable[dict] | str | os.PathLike | None = None,
                              check_pixels: bool = False, progress: bool = True) -> dict:
    """Check the dataset at ``root`` against manifest rows (default: the committed manifest).

    Always: the same image ids (train+val under train/, test under test/), sha256
    of every image file, number of nuclei (mask files; when there are more files
    than the manifest counts, the masks of that image are decoded and all-zero
    ones, which hold no nucleus, are skipped with a warning), image sizes (PNG
    header), and the test images' sizes in test_img_ids.json.
    ``check_pixels`` also decodes every image and mask (``validate_dataset``).
    Raises ``DatasetError`` naming the first file that differs; returns ``summarize(rows)``.
    """
    if rows is None or isinstance(rows, (str, os.PathLike)):
        rows = read_manifest(rows or REPO_MANIFEST)
    rows = list(rows)
    ds = open_dataset(root)
    want_train = {r["image_id"]: r for r in rows if r["split"] in ("train", "val")}
    want_test = {r["image_id"]: r for r in rows if r["split"] == "test"}
    have_train = {it.image_id: it for it in ds.train}
    have_test = {it.image_id: it for it in ds.test}
    for where, want, have in (("train", want_train, have_train), ("test", want_test, have_test)):
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        if missing:
            raise DatasetError(f"{Path(root) / where} lacks image(s) {missing[:5]} listed in the manifest; "
                               "re-acquire the dataset (it is incomplete)")
        if extra:
            raise DatasetError(f"{Path(root) / where} has image(s) {extra[:5]} not in the manifest; use the "
                               "matching manifest or regenerate it with build_manifest")
    for image_id, r in {**want_train, **want_test}.items():
        it = have_train.get(image_id) or have_test[image_id]
        h, w = check_image(it, r)
        if image_id in have_test:
            check_test_size(root, it, (h, w))
        if image_id in have_train and it.n_nuclei != r["n_nuclei"]:
            empty: list = []
            if it.n_nuclei > r["n_nuclei"]:  # all-zero masks are no nuclei: count the others
                empty = nonempty_mask_paths(it.mask_paths, (h, w))[1]
            check_nuclei(it, r, empty)
            warn_empty_masks(empty)
    if check_pixels:
        validate_dataset(ds, progress=progress)
    return summarize(rows)

