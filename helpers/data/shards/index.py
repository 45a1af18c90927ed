"""index.json: the list of shards, and every query on it.

index.json lists every shard with its image (id, organ, split, source_id, size, nuclei), the
file's size and sha256, and what it was made from (the image's sha256 and ``masks_fingerprint``).
``"complete": false`` marks a ``write_shards`` run that is still going or was interrupted (each
finished shard is recorded as it completes); readers (``load_index`` and every query here)
refuse such an index with a message saying to re-run write_shards.

The split lives only here (train and val share the ``labeled`` pool), so changing the
validation split rewrites index.json, never a shard. A shard is handed out only while its file
is the one index.json recorded (``check_shard_files``).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

from helpers.data.imported import dataset_pixel_size
from helpers.data.manifest import sha256_file
from helpers.errors import UserError
from helpers.pixel_size import COURSE, PixelSize

INDEX_NAME = "index.json"
FORMAT_VERSION = 1
LABELED_SOURCE_ID_BASE = 100001
SHARD_SUFFIX = ".tfrecord"


class ShardError(UserError, RuntimeError):
    """Shards on disk are missing, partial or differ from their sources."""


# --------------------------------------------------------------------------- the file
def _parse_index(shards_dir: str | os.PathLike) -> dict:
    """index.json as it is on disk, complete or not; ShardError if absent or unreadable."""
    p = Path(shards_dir) / INDEX_NAME
    if not p.is_file():
        raise ShardError(f"{p} not found: the shards were never completed here; run "
                         "helpers.data.shards.write_shards (notebook 01) first")
    try:
        idx = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(idx["shards"], list):
            raise TypeError("'shards' is not a list")
    except (ValueError, KeyError, TypeError) as e:
        raise ShardError(f"{p} is unreadable ({e}); re-run write_shards (notebook 01) to rebuild it") from e
    return idx


def load_index(shards_dir: str | os.PathLike) -> dict:
    """The parsed index.json of a finished ``write_shards`` run.

    ShardError if it is absent, unreadable, or records an interrupted run
    (``"complete": false``; an index without the key is from an older, finished run).
    """
    p = Path(shards_dir) / INDEX_NAME
    idx = _parse_index(shards_dir)
    if idx.get("complete") is False:
        raise ShardError(
            f"{p} records an interrupted write_shards run ({len(idx['shards'])} of {idx.get('n_wanted', '?')} "
            "shards finished): run notebook 01 (helpers.data.shards.write_shards) again; it keeps the finished "
            "shards and writes only the rest")
    return idx


def shards_pixel_size(shards_dir: str | os.PathLike) -> PixelSize:
    """The µm per pixel of the images the shards hold (an index from before it was recorded: the
    course data's, which was all there was then)."""
    idx = load_index(shards_dir)
    if "pixel_size_um" not in idx:
        return COURSE
    return PixelSize(idx["pixel_size_um"], idx.get("pixel_size_from", ""))


def read_index_or_empty(shards_dir: str | os.PathLike) -> dict:
    """index.json as it is on disk, complete or not; an empty index when there is none (or it is unreadable)."""
    try:
        return _parse_index(shards_dir)
    except ShardError:
        return {"version": FORMAT_VERSION, "shards": []}


def new_index(dataset_root, entries: Iterable[dict], complete: bool, n_wanted: int) -> dict:
    """The content of index.json for shard ``entries`` (``n_wanted`` of them when complete)."""
    entries = sorted(entries, key=lambda e: e["file"])
    size = dataset_pixel_size(dataset_root)
    return {"version": FORMAT_VERSION, "complete": complete, "n_wanted": n_wanted,
            "dataset_root": str(Path(dataset_root).resolve()), "n_shards": len(entries),
            "pixel_size_um": size.um, "pixel_size_from": size.source,
            "n_nuclei": sum(e["n_nuclei"] for e in entries), "shards": entries}


# --------------------------------------------------------------------------- what an entry records
def source_ids(rows: Sequence[dict], ds) -> dict[str, str]:
    """Numeric source_id per image id: the COCO id from test_img_ids.json for test images,
    ``LABELED_SOURCE_ID_BASE + rank`` of the sorted labeled ids for labeled ones."""
    coco = {it.image_id: it.coco_id for it in ds.test}
    labeled = sorted(r["image_id"] for r in rows if r["split"] != "test")
    out = {image_id: str(LABELED_SOURCE_ID_BASE + k) for k, image_id in enumerate(labeled)}
    for r in rows:
        if r["split"] == "test":
            out[r["image_id"]] = str(coco[r["image_id"]])
    return out


def masks_fingerprint(mask_paths: Sequence[Path], prev: dict | None = None) -> dict:
    """``{"masks_sha256", "masks_stat"}`` of an image's mask files: a shard is valid only for the
    exact masks it was made from (an edited, moved, added or removed mask changes the sha256).

    ``masks_sha256`` hashes every mask's name and bytes. Like git's index, ``masks_stat`` (names,
    sizes, modification times) lets a re-run reuse ``prev``'s hash without reading the masks again
    while none of them was touched; any touched mask is read and hashed.
    """
    paths = sorted(Path(p) for p in mask_paths)
    stat = hashlib.sha256()
    for p in paths:
        st = p.stat()
        stat.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    stat_digest = stat.hexdigest()
    if prev and prev.get("masks_stat") == stat_digest and prev.get("masks_sha256"):
        return {"masks_sha256": prev["masks_sha256"], "masks_stat": stat_digest}
    content = hashlib.sha256()
    for p in paths:
        content.update(f"{p.name}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n".encode())
    return {"masks_sha256": content.hexdigest(), "masks_stat": stat_digest}


def file_problem(shards_dir: str | os.PathLike, entry: dict) -> str | None:
    """Why the shard file of index entry ``entry`` is not the one index.json recorded (missing, another
    size: truncated, another sha256: bytes changed), or None when it is."""
    p = Path(shards_dir) / entry["file"]
    if not p.is_file():
        return f"{entry['file']} is missing"
    if p.stat().st_size != entry.get("size"):
        return (f"{entry['file']} is {p.stat().st_size} bytes, {INDEX_NAME} says {entry.get('size')} "
                "(truncated or damaged)")
    if sha256_file(p) != entry.get("sha256"):
        return f"{entry['file']} is damaged (its sha256 is not the one {INDEX_NAME} recorded)"
    return None


# --------------------------------------------------------------------------- queries
def check_shard_files(shards_dir: str | os.PathLike, entries: Sequence[dict]) -> None:
    """ShardError naming every shard of ``entries`` that is missing, or is no longer the file
    index.json recorded (size, then sha256: truncated, or bytes changed), before anything reads it."""
    bad = [msg for msg in (file_problem(shards_dir, e) for e in entries) if msg]
    if bad:
        raise ShardError(f"{len(bad)} shard(s) in {Path(shards_dir)} cannot be used: " + "; ".join(bad[:5])
                         + ("; ..." if len(bad) > 5 else "") + ". Run notebook 01 again: it rewrites "
                         "exactly these shards (and keeps the others).")


def select_entries(shards_dir: str | os.PathLike, image_ids: Iterable[str] | None = None,
                   organs: Iterable[str] | None = None, splits: Sequence[str] | None = ("train",)) -> list[dict]:
    """The index.json entries of a subset, in file order (``select_shards``' filters; the files are not
    checked). E.g. the test images: ``select_entries(shards_dir, splits=("test",))``."""
    shards_dir = Path(shards_dir)
    entries = load_index(shards_dir)["shards"]
    sel = entries
    if splits is not None:
        sel = [e for e in sel if e["split"] in set(splits)]
    if organs is not None:
        organs = set([organs] if isinstance(organs, str) else organs)
        known = {e["organ"] for e in entries}
        if organs - known:
            raise ShardError(f"organ(s) {sorted(organs - known)} not in {shards_dir / INDEX_NAME}; "
                             f"known: {sorted(known)}")
        sel = [e for e in sel if e["organ"] in organs]
    if image_ids is not None:
        image_ids = set([image_ids] if isinstance(image_ids, str) else image_ids)
        known = {e["image_id"] for e in entries}
        if image_ids - known:
            raise ShardError(f"image id(s) {sorted(image_ids - known)[:5]} not in {shards_dir / INDEX_NAME}")
        sel = [e for e in sel if e["image_id"] in image_ids]
    return sel


def select_shards(shards_dir: str | os.PathLike, image_ids: Iterable[str] | None = None,
                  organs: Iterable[str] | None = None, splits: Sequence[str] | None = ("train",)) -> list[Path]:
    """Shard files for a training subset, from index.json.

    Filters combine (AND): ``splits`` (None = all; e.g. ("train", "val") for the
    final model), ``organs`` (e.g. ["prostate"]) and ``image_ids`` (hand-picked).
    Every selected file must be the one index.json records (size and sha256: a shard
    being rewritten or damaged is never handed out): ShardError otherwise. Unknown ids or
    organs are an error too (a typo would silently train on nothing).
    """
    sel = select_entries(shards_dir, image_ids, organs, splits)
    check_shard_files(shards_dir, sel)
    return [Path(shards_dir) / e["file"] for e in sel]


def image_ids_of_files(shards_dir: str | os.PathLike, files, missing_ok: bool = False) -> list[str]:
    """The image ids of shard ``files`` (paths or names, or one comma-free string), from index.json.

    ``missing_ok``: [] instead of ShardError when ``shards_dir`` holds no finished index (e.g. a
    stage trained on explicit files outside the workspace's shards)."""
    names = {Path(f).name for f in ([files] if isinstance(files, str) else files)}
    try:
        entries = load_index(shards_dir)["shards"]
    except ShardError:
        if missing_ok:
            return []
        raise
    return sorted(e["image_id"] for e in entries if e["file"] in names)
