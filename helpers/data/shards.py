"""TFRecord shards that Model Garden's Mask R-CNN reads, one image per file.

Layout of ``shards_dir``::

    labeled-<organ>-<k:05d>-of-<n:05d>.tfrecord   train + val images (pool "labeled")
    test-<organ>-<k:05d>-of-<n:05d>.tfrecord      test images (no objects)
    index.json                                    lists every shard; "complete": false while
                                                  write_shards runs (each finished shard is
                                                  recorded as it completes), true at the end

One image per file, so any training subset (one organ, a split, hand-picked
images) is just a list of files: ``select_shards``. The split lives only in
index.json (train and val share the ``labeled`` pool), so changing the
validation split rewrites index.json, never a shard.

Each record is a tf.Example with exactly the keys of
``official.vision.dataloaders.tf_example_decoder.TfExampleDecoder(include_mask=True)``:
image/encoded (the source PNG bytes when the source is RGB), image/format,
image/height, image/width, image/source_id (numeric string: the COCO id from
test_img_ids.json for test images, ``100001 + rank`` of the sorted labeled ids
for labeled ones; index.json maps it back to the image id), image/filename
(= image id), image/object/bbox/{xmin,ymin,xmax,ymax} (normalised, pixel-edge
convention: xmax = (last column + 1) / width), image/object/class/label (1),
image/object/is_crowd (0), image/object/area (pixels), image/object/mask (one
PNG per nucleus, values 0/1), in mask-file order. One extra key the decoder
ignores, ``nuclei/instance_map``: a 16-bit PNG where pixel = object number
(1-based, 0 = background); it is written only when no two masks overlap and
gives a fast, bit-identical way to get all masks back (``read_shard(...,
fast=True)``).

Re-running ``write_shards`` skips shards whose file matches index.json (size
and sha256) and whose content is still what the manifest asks for. Temp files
of an interrupted run (``*.partial``), shards that do not match the index and
shards not in the index are reported and rewritten, never read.

index.json is rewritten (atomically) before the first shard is written, marked
``"complete": false``, and again after every finished shard, so an interrupted
run (a disconnect, a bad mask) keeps every finished shard: the re-run skips them
and writes only the rest. Readers (``load_index``, ``select_shards``) refuse an
incomplete index with a message saying to re-run write_shards.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from helpers.atomic import atomic_path, atomic_write_json, folder_error, is_partial
from helpers.data.dataset import (DatasetError, EmptyMaskError, nonempty_mask_paths, open_dataset, read_image,
                             read_mask, warn_empty_masks)
from helpers.data.manifest import assign_shards, pool_of, sha256_file

try:
    import cv2
except ImportError:  # pragma: no cover
    cv2 = None

INDEX_NAME = "index.json"
FORMAT_VERSION = 1
LABELED_SOURCE_ID_BASE = 100001
INSTANCE_MAP_KEY = "nuclei/instance_map"
SHARD_SUFFIX = ".tfrecord"


class ShardError(RuntimeError):
    """Shards on disk are missing, partial or differ from their sources."""


# --------------------------------------------------------------------------- encoding helpers
def encode_png(arr: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8/uint16 HxW or HxWx3 (RGB) array."""
    if cv2 is not None:
        a = arr[..., ::-1] if arr.ndim == 3 else arr  # cv2 expects BGR
        ok, buf = cv2.imencode(".png", np.ascontiguousarray(a))
        if not ok:
            raise ValueError("PNG encoding failed")
        return buf.tobytes()
    import io
    from PIL import Image
    b = io.BytesIO()
    Image.fromarray(arr).save(b, format="PNG")
    return b.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """Decode PNG bytes (grey -> HxW, colour -> HxWx3 RGB), keeping the bit depth."""
    if cv2 is not None:
        a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if a is None:
            raise ValueError("not a decodable PNG")
        return a[..., 2::-1] if a.ndim == 3 else a
    import io
    from PIL import Image
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(ymin, xmin, ymax, xmax) in pixels, max exclusive, of a non-empty bool mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def _feature(tf, kind: str, values):
    if kind == "bytes":
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
    if kind == "int":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))


@dataclass
class _Encoded:
    image_png: bytes
    height: int
    width: int
    mask_pngs: list[bytes]
    boxes: list[tuple[int, int, int, int]]
    areas: list[int]
    instance_map_png: bytes | None
    notes: list[str] = field(default_factory=list)
    empty: list[Path] = field(default_factory=list)  # all-zero mask files, skipped


def _tf_decode_png(data: bytes, dtype=None) -> np.ndarray:
    import tensorflow as tf

    return tf.io.decode_png(data, channels=1, dtype=dtype or tf.uint8).numpy()[..., 0]


def _encode_item(item, workers: int, verify: bool = False) -> _Encoded:
    """Read one dataset item (train or test) and encode its image and masks.

    The instance map is always decoded again (``tf.io.decode_png``, once per
    image) and compared with the labels built from the source masks, so every
    source mask is checked bit for bit against what the shard holds.
    ``verify`` also decodes every per-instance mask PNG (Model Garden's input)
    and compares it with its source mask; ShardError otherwise. An all-zero mask
    holds no nucleus: it is skipped with a ``DatasetNote`` warning (``empty``).
    """
    notes: list[str] = []
    img = read_image(item.image_path, notes)
    h, w = img.shape[:2]
    if notes:  # not RGB on disk: store the converted RGB
        image_png = encode_png(img)
    else:
        image_png = Path(item.image_path).read_bytes()
    mask_paths = getattr(item, "mask_paths", ())
    n = len(mask_paths)
    mask_pngs: list[bytes] = [b""] * n
    boxes: list = [None] * n
    areas = [0] * n
    labels = np.zeros((h, w), np.uint16) if n else None

    def one(i: int):
        try:
            m = read_mask(mask_paths[i], (h, w))
        except EmptyMaskError:
            return None
        y0, x0, y1, x1 = mask_box(m)
        png = encode_png(m.view(np.uint8))  # 0/1
        if verify and not np.array_equal(_tf_decode_png(png), m.view(np.uint8)):
            raise ShardError(f"encoded mask of {mask_paths[i]} does not decode to the source mask")
        mask_pngs[i] = png
        boxes[i] = (y0, x0, y1, x1)
        areas[i] = int(np.count_nonzero(m[y0:y1, x0:x1]))
        return m[y0:y1, x0:x1]

    overlap = n >= 65535
    crops: list = []
    if n:
        with ThreadPoolExecutor(max(1, workers)) as ex:
            crops = list(ex.map(one, range(n)))
    empty = [Path(mask_paths[i]) for i, c in enumerate(crops) if c is None]
    if empty:
        keep = [i for i, c in enumerate(crops) if c is not None]
        mask_pngs = [mask_pngs[i] for i in keep]
        boxes = [boxes[i] for i in keep]
        areas = [areas[i] for i in keep]
        crops = [crops[i] for i in keep]
        n = len(keep)
        warn_empty_masks(empty, notes)
    for i, crop in enumerate(crops):
        if overlap:
            break
        y0, x0, y1, x1 = boxes[i]
        win = labels[y0:y1, x0:x1]
        if np.any(win[crop]):
            overlap = True
            continue
        win[crop] = i + 1
    instance_map_png = encode_png(labels) if n and not overlap else None
    if instance_map_png is not None:
        import tensorflow as tf

        if not np.array_equal(_tf_decode_png(instance_map_png, tf.uint16), labels):
            raise ShardError(f"instance map of {item.image_id} does not decode to the source masks")
    if n and overlap:
        notes.append(f"masks of {item.image_id} overlap: no {INSTANCE_MAP_KEY} (fast read falls back)")
    return _Encoded(image_png, h, w, mask_pngs, boxes, areas, instance_map_png, notes, empty)


def make_example(enc: _Encoded, image_id: str, source_id: str) -> bytes:
    """Serialized tf.Example for one image (see the module doc for the keys)."""
    import tensorflow as tf

    h, w = enc.height, enc.width
    feats = {
        "image/encoded": _feature(tf, "bytes", [enc.image_png]),
        "image/format": _feature(tf, "bytes", [b"png"]),
        "image/height": _feature(tf, "int", [h]),
        "image/width": _feature(tf, "int", [w]),
        "image/source_id": _feature(tf, "bytes", [source_id.encode()]),
        "image/filename": _feature(tf, "bytes", [image_id.encode()]),
        "image/object/bbox/ymin": _feature(tf, "float", [b[0] / h for b in enc.boxes]),
        "image/object/bbox/xmin": _feature(tf, "float", [b[1] / w for b in enc.boxes]),
        "image/object/bbox/ymax": _feature(tf, "float", [b[2] / h for b in enc.boxes]),
        "image/object/bbox/xmax": _feature(tf, "float", [b[3] / w for b in enc.boxes]),
        "image/object/class/label": _feature(tf, "int", [1] * len(enc.boxes)),
        "image/object/is_crowd": _feature(tf, "int", [0] * len(enc.boxes)),
        "image/object/area": _feature(tf, "float", [float(a) for a in enc.areas]),
        "image/object/mask": _feature(tf, "bytes", enc.mask_pngs),
    }
    if enc.instance_map_png is not None:
        feats[INSTANCE_MAP_KEY] = _feature(tf, "bytes", [enc.instance_map_png])
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


# --------------------------------------------------------------------------- index
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


def _read_index_or_empty(shards_dir: Path) -> dict:
    try:
        return _parse_index(shards_dir)
    except ShardError:
        return {"version": FORMAT_VERSION, "shards": []}


def _index(dataset_root, entries: Iterable[dict], complete: bool, n_wanted: int) -> dict:
    entries = sorted(entries, key=lambda e: e["file"])
    return {"version": FORMAT_VERSION, "complete": complete, "n_wanted": n_wanted,
            "dataset_root": str(Path(dataset_root).resolve()), "n_shards": len(entries),
            "n_nuclei": sum(e["n_nuclei"] for e in entries), "shards": entries}


def source_ids(rows: Sequence[dict], ds) -> dict[str, str]:
    """Numeric source_id per image id (see module doc)."""
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


def _file_matches(path: Path, entry: dict) -> bool:
    return (path.is_file() and path.stat().st_size == entry.get("size")
            and sha256_file(path) == entry.get("sha256"))


@dataclass
class WriteReport:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    partial_removed: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # on disk but not matching the index
    unindexed: list[str] = field(default_factory=list)  # on disk but not in the index
    stale_removed: list[str] = field(default_factory=list)  # from an older index, no longer wanted
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        s = f"shards: {len(self.written)} written, {len(self.skipped)} skipped (already valid)"
        for name, lst in (("partial temp files removed", self.partial_removed),
                          ("rewritten because they did not match index.json", self.mismatched),
                          ("rewritten because they were not in index.json", self.unindexed),
                          ("stale shards removed", self.stale_removed)):
            if lst:
                s += f"; {len(lst)} {name}: {lst[:3]}{'...' if len(lst) > 3 else ''}"
        return s


def write_shards(dataset_root: str | os.PathLike, manifest_rows: Iterable[dict], shards_dir: str | os.PathLike,
                 workers: int | None = None, progress: bool = True, verbose: bool = True,
                 verify: bool = False) -> dict:
    """Write one TFRecord per image of ``manifest_rows`` into ``shards_dir``; return the index.

    Valid shards from an earlier run are skipped; partial or unverifiable ones
    are rewritten (see the module doc). The returned dict is index.json plus a
    ``"report"`` key (a ``WriteReport``; not stored in the file).

    Every written shard is read back from disk and compared with the record
    that was serialized, and its instance map is decoded and compared with the
    source masks. ``verify=True`` also decodes each per-instance mask PNG with
    ``tf.io.decode_png`` and compares it with its source mask (one pass over the
    sources instead of ``write_shards`` + ``verify_shards``' two; ~+50% time).
    """
    shards_dir = Path(shards_dir)
    shards_dir.mkdir(parents=True, exist_ok=True)
    workers = workers or min(4, os.cpu_count() or 1)
    rows = [dict(r) for r in manifest_rows]
    if any(not r.get("shard") for r in rows):
        rows = assign_shards(rows)
    ds = open_dataset(dataset_root)
    items = {it.image_id: it for it in (*ds.train, *ds.test)}
    missing = [r["image_id"] for r in rows if r["image_id"] not in items]
    if missing:
        raise DatasetError(f"{dataset_root} lacks image(s) {missing[:5]} listed in the manifest; "
                           "re-acquire the dataset or use its own manifest")
    report = WriteReport()
    _remove_partials(shards_dir, report)
    old = {e["file"]: e for e in _read_index_or_empty(shards_dir)["shards"]}
    entries, todo = _plan(rows, items, source_ids(rows, ds), old, shards_dir, report)
    _remove_stale(old, rows, shards_dir, report)
    n_wanted = len(entries) + len(todo)
    index_path = shards_dir / INDEX_NAME
    _write_todo(todo, entries, n_wanted, dataset_root, index_path, workers, verify, progress, report)
    # 5. index.json, complete (already written after the last shard when there was one to write)
    index = _index(dataset_root, entries, True, n_wanted)
    if not todo:
        atomic_write_json(index_path, index)
    if verbose:
        print(report.summary())
    return {**index, "report": report}


def _remove_partials(shards_dir: Path, report: WriteReport) -> None:
    """1. leftovers of an interrupted run: temp files are never read, only removed."""
    for p in sorted(shards_dir.iterdir()):
        if is_partial(p) and p.is_file():
            p.unlink()
            report.partial_removed.append(p.name)


def _plan(rows, items, sids, old: dict, shards_dir: Path, report: WriteReport) -> tuple[list, list]:
    """2. decide what to write: ``(entries kept from the old index, [(row, item, entry, path)] to write)``."""
    entries, todo = [], []
    for r in sorted(rows, key=lambda r: r["shard"]):
        it = items[r["image_id"]]
        want = {"file": r["shard"], "image_id": r["image_id"], "organ": r["organ"], "split": r["split"],
                "pool": pool_of(r["split"]), "source_id": sids[r["image_id"]], "n_nuclei": r["n_nuclei"],
                "height": r["height"], "width": r["width"], "image_sha256": r["sha256"],
                "format_version": FORMAT_VERSION}
        path = shards_dir / r["shard"]
        prev = old.get(r["shard"])
        want.update(masks_fingerprint(getattr(it, "mask_paths", ()), prev))
        same_content = prev is not None and all(prev.get(k) == v for k, v in want.items()
                                                if k not in ("split", "masks_stat"))
        if same_content and _file_matches(path, prev):
            entries.append({**prev, **want})
            report.skipped.append(r["shard"])
            continue
        if path.exists():
            (report.mismatched if prev is not None else report.unindexed).append(r["shard"])
        todo.append((r, it, want, path))
    return entries, todo


def _remove_stale(old: dict, rows, shards_dir: Path, report: WriteReport) -> None:
    """3. shards of an older index that are no longer wanted (ours: we listed them)."""
    wanted = {r["shard"] for r in rows}
    for name in sorted(set(old) - wanted):
        p = shards_dir / name
        if p.is_file() and p.suffix == SHARD_SUFFIX and not is_partial(p):
            p.unlink()
            report.stale_removed.append(name)


def _write_todo(todo, entries: list, n_wanted: int, dataset_root, index_path: Path, workers, verify: bool,
                progress: bool, report: WriteReport) -> None:
    """4. write (atomically: temp file + rename); index.json records every finished shard as it
    completes, marked incomplete until the last one, so an interruption loses only the shard
    being written."""
    from helpers.progress import tqdm

    if todo:
        atomic_write_json(index_path, _index(dataset_root, entries, False, n_wanted))
    bar = tqdm(total=sum(max(1, r["n_nuclei"]) for r, *_ in todo), desc="write shards", unit="mask",
               disable=not progress or not todo)
    try:
        for r, it, want, path in todo:
            bar.set_postfix_str(r["image_id"])
            entries.append(_write_shard(r, it, want, path, workers, verify, report))
            complete = len(entries) == n_wanted
            atomic_write_json(index_path, _index(dataset_root, entries, complete, n_wanted))
            bar.update(max(1, r["n_nuclei"]))
    except DatasetError as e:
        raise DatasetError(f"{e}\n(the {len(entries)} finished shard(s) of {n_wanted} are kept in {index_path}: "
                           "after the fix, the re-run writes only the rest)") from e
    finally:
        bar.close()


def _write_shard(r: dict, it, want: dict, path: Path, workers, verify: bool, report: WriteReport) -> dict:
    """One image's shard, checked against its manifest row, written and read back; its index entry."""
    import tensorflow as tf

    if it.image_id != r["image_id"]:  # pragma: no cover - defensive
        raise ShardError(f"internal error: {it.image_id} != {r['image_id']}")
    masks_dir = Path(it.image_path).parent.parent / "masks"
    n_files = len(getattr(it, "mask_paths", ()))
    if n_files < r["n_nuclei"]:  # more files than nuclei: empty masks, counted below
        raise DatasetError(f"{masks_dir} holds {n_files} masks but the manifest says {r['n_nuclei']}; "
                           "re-acquire the dataset or rebuild the manifest")
    if sha256_file(it.image_path) != r["sha256"]:
        raise DatasetError(f"{it.image_path}: sha256 does not match the manifest; re-acquire "
                           "the dataset or rebuild the manifest")
    enc = _encode_item(it, workers, verify)
    if len(enc.mask_pngs) != r["n_nuclei"]:
        raise DatasetError(
            f"{masks_dir} holds {len(enc.mask_pngs)} non-empty masks ({len(enc.empty)} empty one(s) "
            f"skipped: {[q.name for q in enc.empty[:3]]}) but the manifest says {r['n_nuclei']}: the "
            "dataset differs from the one the manifest describes. Restore the masks from the original "
            "dataset, or, if your data is meant to be this way, rebuild the manifest from it "
            "(helpers.data.manifest.build_manifest + write_manifest) and pass it as manifest_path")
    if (enc.height, enc.width) != (r["height"], r["width"]):
        raise DatasetError(f"{it.image_path} is {enc.width}x{enc.height} but the manifest says "
                           f"{r['width']}x{r['height']}")
    report.notes.extend(enc.notes)
    data = make_example(enc, r["image_id"], want["source_id"])
    try:
        with atomic_path(path, need=len(data)) as tmp:
            with tf.io.TFRecordWriter(str(tmp)) as w:
                w.write(data)
            if _records(tmp, _own_temp=True) != [data]:
                raise ShardError(f"{tmp} does not read back as written (disk problem?); try again")
    except tf.errors.OpError as e:  # TensorFlow's own file errors: a full or read-only folder named
        raise (folder_error(e, path, len(data)) or e) from e
    report.written.append(path.name)
    return {**want, "size": path.stat().st_size, "sha256": sha256_file(path),
            "instance_map": enc.instance_map_png is not None}


# --------------------------------------------------------------------------- selection
def select_shards(shards_dir: str | os.PathLike, image_ids: Iterable[str] | None = None,
                  organs: Iterable[str] | None = None, splits: Sequence[str] | None = ("train",)) -> list[Path]:
    """Shard files for a training subset, from index.json.

    Filters combine (AND): ``splits`` (None = all; e.g. ("train", "val") for the
    final model), ``organs`` (e.g. ["prostate"]) and ``image_ids`` (hand-picked).
    Every selected file must be the one index.json records (size and sha256: a shard
    being rewritten or damaged is never handed out): ShardError otherwise. Unknown ids or
    organs are an error too (a typo would silently train on nothing).
    """
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
    check_shard_files(shards_dir, sel)
    return [shards_dir / e["file"] for e in sel]


def image_ids_of_files(shards_dir: str | os.PathLike, files) -> list[str]:
    """The image ids of shard ``files`` (paths or names, or one comma-free string), from index.json."""
    names = {Path(f).name for f in ([files] if isinstance(files, str) else files)}
    return sorted(e["image_id"] for e in load_index(shards_dir)["shards"] if e["file"] in names)


def check_shard_files(shards_dir: str | os.PathLike, entries: Sequence[dict]) -> None:
    """ShardError naming every shard of ``entries`` that is missing, or is no longer the file
    index.json recorded (size, then sha256: truncated, or bytes changed), before anything reads it."""
    shards_dir = Path(shards_dir)
    bad = []
    for e in entries:
        p = shards_dir / e["file"]
        if not p.is_file():
            bad.append(f"{e['file']} is missing")
        elif p.stat().st_size != e.get("size"):
            bad.append(f"{e['file']} is {p.stat().st_size} bytes, {INDEX_NAME} says {e.get('size')} (truncated "
                       "or damaged)")
        elif sha256_file(p) != e.get("sha256"):
            bad.append(f"{e['file']} is damaged (its sha256 is not the one {INDEX_NAME} recorded)")
    if bad:
        raise ShardError(f"{len(bad)} shard(s) in {shards_dir} cannot be used: " + "; ".join(bad[:5])
                         + ("; ..." if len(bad) > 5 else "") + ". Run notebook 01 again: it rewrites "
                         "exactly these shards (and keeps the others).")


# --------------------------------------------------------------------------- reading
_DECODER = None


def _mg_decoder():
    global _DECODER
    if _DECODER is None:
        from official.vision.dataloaders.tf_example_decoder import TfExampleDecoder
        _DECODER = TfExampleDecoder(include_mask=True)
    return _DECODER


def _records(path: Path, _own_temp: bool = False) -> list[bytes]:
    import tensorflow as tf

    if is_partial(path) and not _own_temp:
        raise ShardError(f"{path} is a temp file of an interrupted run; never read it: re-run write_shards")
    return [r.numpy() for r in tf.data.TFRecordDataset(str(path))]


def _parse_extra(record: bytes) -> dict:
    import tensorflow as tf

    ex = tf.train.Example.FromString(record)
    f = ex.features.feature
    out = {"image_id": f["image/filename"].bytes_list.value[0].decode(),
           "instance_map_png": f[INSTANCE_MAP_KEY].bytes_list.value[0] if INSTANCE_MAP_KEY in f else None}
    return out


def example_boxes(feature, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(normalized, pixel)`` boxes (N, 4) ymin, xmin, ymax, xmax of a ``tf.train.Example``'s
    ``features.feature``; pixel boxes are rounded float32."""
    bn = np.stack([np.array(feature[f"image/object/bbox/{k}"].float_list.value, np.float32)
                   for k in ("ymin", "xmin", "ymax", "xmax")], axis=-1).reshape(-1, 4)
    return bn, (bn * np.array([height, width, height, width], np.float32)).round()


def masks_from_instance_map(labels: np.ndarray, boxes_px: np.ndarray) -> np.ndarray:
    """(N,H,W) bool masks from a label map and pixel boxes (ymin,xmin,ymax,xmax)."""
    n = len(boxes_px)
    out = np.zeros((n, *labels.shape), dtype=bool)
    for i, (y0, x0, y1, x1) in enumerate(np.asarray(boxes_px, dtype=np.int64)):
        out[i, y0:y1, x0:x1] = labels[y0:y1, x0:x1] == i + 1
    return out


def read_shard(path: str | os.PathLike, fast: bool = False) -> dict:
    """Decode a one-image shard.

    Default: with Model Garden's ``TfExampleDecoder(include_mask=True)`` (proof that
    Model Garden can read it). ``fast=True``: masks from ``nuclei/instance_map``
    (same bits, much faster; falls back to the per-instance PNGs without it).
    Returns numpy: image (H,W,3 uint8), masks (N,H,W bool), boxes (N,4 float32
    pixels ymin,xmin,ymax,xmax), boxes_normalized, classes, areas, is_crowd,
    source_id (str), image_id (str).
    """
    path = Path(path)
    recs = _records(path)
    if len(recs) != 1:
        raise ShardError(f"{path} holds {len(recs)} records, expected 1; re-run write_shards")
    extra = _parse_extra(recs[0])
    if not fast:
        import tensorflow as tf

        d = _mg_decoder().decode(tf.constant(recs[0]))
        h, w = int(d["height"]), int(d["width"])
        bn = d["groundtruth_boxes"].numpy()
        masks = d["groundtruth_instance_masks"].numpy()
        if masks.size and not np.isin(masks, (0.0, 1.0)).all():
            raise ShardError(f"{path}: mask values are not 0/1")
        return {"image": d["image"].numpy(), "masks": masks.astype(bool), "boxes_normalized": bn,
                "boxes": (bn * np.array([h, w, h, w], np.float32)).round().astype(np.float32),
                "classes": d["groundtruth_classes"].numpy(), "areas": d["groundtruth_area"].numpy(),
                "is_crowd": d["groundtruth_is_crowd"].numpy(),
                "source_id": d["source_id"].numpy().decode(), "image_id": extra["image_id"]}
    import tensorflow as tf

    ex = tf.train.Example.FromString(recs[0]).features.feature
    h, w = ex["image/height"].int64_list.value[0], ex["image/width"].int64_list.value[0]
    bn, boxes = example_boxes(ex, h, w)
    if extra["instance_map_png"] is not None:
        masks = masks_from_instance_map(decode_png(extra["instance_map_png"]), boxes)
    else:
        pngs = ex["image/object/mask"].bytes_list.value
        masks = np.zeros((len(pngs), h, w), bool)
        for i, b in enumerate(pngs):
            masks[i] = decode_png(b) > 0
    return {"image": decode_png(ex["image/encoded"].bytes_list.value[0]), "masks": masks,
            "boxes": boxes.astype(np.float32), "boxes_normalized": bn,
            "classes": np.array(ex["image/object/class/label"].int64_list.value),
            "areas": np.array(ex["image/object/area"].float_list.value, np.float32),
            "is_crowd": np.array(ex["image/object/is_crowd"].int64_list.value).astype(bool),
            "source_id": ex["image/source_id"].bytes_list.value[0].decode(), "image_id": extra["image_id"]}


# --------------------------------------------------------------------------- verification
def verify_shards(shards_dir: str | os.PathLike, dataset_root: str | os.PathLike, progress: bool = True,
                  workers: int | None = None, image_ids: Iterable[str] | None = None) -> dict:
    """Check every shard in index.json bit-exactly against the source PNGs.

    Per shard: file size and sha256 as indexed; the image decodes to the source
    pixels; every ``image/object/mask`` decoded with ``tf.io.decode_png`` (what
    Model Garden uses) holds only 0/1 and equals the source mask; boxes and
    areas match the masks; the instance map (if any) gives the same masks.
    ``image_ids`` limits the check to those images. Raises ShardError on the
    first difference; returns counts.
    """
    import tensorflow as tf
    from helpers.progress import tqdm

    shards_dir = Path(shards_dir)
    workers = workers or min(4, os.cpu_count() or 1)
    entries = load_index(shards_dir)["shards"]
    if image_ids is not None:
        image_ids = set(image_ids)
        entries = [e for e in entries if e["image_id"] in image_ids]
    ds = open_dataset(dataset_root)
    items = {it.image_id: it for it in (*ds.train, *ds.test)}
    n_masks = 0
    bar = tqdm(total=sum(max(1, e["n_nuclei"]) for e in entries), desc="verify shards", unit="mask",
               disable=not progress)
    pool = ThreadPoolExecutor(workers)
    try:
        for e in entries:
            path = shards_dir / e["file"]
            if not _file_matches(path, e):
                raise ShardError(f"{path} does not match {INDEX_NAME} (size/sha256); re-run write_shards")
            it = items.get(e["image_id"])
            if it is None:
                raise ShardError(f"{path} holds {e['image_id']}, which is not in {dataset_root}")
            (rec,) = _records(path)
            f = tf.train.Example.FromString(rec).features.feature
            src_img = read_image(it.image_path)
            img = tf.io.decode_png(f["image/encoded"].bytes_list.value[0], channels=3).numpy()
            if not np.array_equal(img, src_img):
                raise ShardError(f"{path}: image differs from {it.image_path}")
            h, w = img.shape[:2]
            pngs = list(f["image/object/mask"].bytes_list.value)
            paths = list(getattr(it, "mask_paths", ()))
            if len(pngs) < len(paths):  # all-zero masks are skipped when shards are written
                paths = nonempty_mask_paths(paths, (h, w), workers)[0]
            if len(pngs) != len(paths) or len(pngs) != e["n_nuclei"]:
                raise ShardError(f"{path}: {len(pngs)} masks but {len(paths)} mask files for {it.image_id}")
            boxes = example_boxes(f, h, w)[1].astype(np.int64)
            areas = np.array(f["image/object/area"].float_list.value)
            labels = None
            if INSTANCE_MAP_KEY in f:
                labels = tf.io.decode_png(f[INSTANCE_MAP_KEY].bytes_list.value[0], dtype=tf.uint16).numpy()[..., 0]
            def check(i: int) -> None:
                g = tf.io.decode_png(pngs[i], channels=1).numpy()[..., 0]  # what Model Garden does
                src = read_mask(paths[i], (h, w))
                if g.shape != (h, w) or g.max() != 1 or not np.array_equal(g == 1, src) or \
                        np.count_nonzero(g) != np.count_nonzero(src):
                    raise ShardError(f"{path}: mask {i} differs from {paths[i]} (or is not 0/1)")
                if tuple(boxes[i]) != mask_box(src) or int(areas[i]) != int(np.count_nonzero(src)):
                    raise ShardError(f"{path}: box/area of mask {i} do not match {paths[i]}")
                if labels is not None:
                    y0, x0, y1, x1 = boxes[i]
                    crop = labels[y0:y1, x0:x1] == i + 1
                    if int(crop.sum()) != int(areas[i]) or not np.array_equal(crop, src[y0:y1, x0:x1]):
                        raise ShardError(f"{path}: {INSTANCE_MAP_KEY} differs from {paths[i]}")
                bar.update(1)

            list(pool.map(check, range(len(pngs))))
            if labels is not None and int(np.count_nonzero(labels)) != int(areas.sum()):
                raise ShardError(f"{path}: {INSTANCE_MAP_KEY} has pixels outside every mask")
            n_masks += len(pngs)
            if not pngs:
                bar.update(1)
    finally:
        bar.close()
        pool.shutdown()
    return {"shards": len(entries), "masks": n_masks}
