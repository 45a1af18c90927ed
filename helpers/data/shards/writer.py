"""Writing shards: each image of the manifest encoded as one tf.Example in its own TFRecord file.

Each record has exactly the keys of
``official.vision.dataloaders.tf_example_decoder.TfExampleDecoder(include_mask=True)``:
image/encoded (the source PNG bytes when the source is RGB), image/format,
image/height, image/width, image/source_id (numeric string, see ``index.source_ids``;
index.json maps it back to the image id), image/filename (= image id),
image/object/bbox/{xmin,ymin,xmax,ymax} (normalised, pixel-edge convention:
xmax = (last column + 1) / width), image/object/class/label (1),
image/object/is_crowd (0), image/object/area (pixels), image/object/mask (one
PNG per nucleus, values 0/1), in mask-file order. One extra key the decoder
ignores, ``nuclei/instance_map`` (``reader.INSTANCE_MAP_KEY``): a 16-bit PNG where
pixel = object number (1-based, 0 = background); it is written only when no two masks
overlap and gives a fast, bit-identical way to get all masks back (``read_shard(...,
fast=True)``).

Re-running ``write_shards`` skips shards whose file matches index.json (size
and sha256) and whose content is still what the manifest asks for. Temp files
of an interrupted run (``*.partial``), shards that do not match the index and
shards not in the index are reported and rewritten, never read.

index.json is rewritten (atomically) before the first shard is written, marked
``"complete": false``, and again after every finished shard, so an interrupted
run (a disconnect, a bad mask) keeps every finished shard: the re-run skips them
and writes only the rest.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from helpers.atomic import atomic_path, atomic_write_json, folder_error, is_partial
from helpers.data.dataset import DatasetError, EmptyMaskError, open_dataset, read_image, read_mask, warn_empty_masks
from helpers.data.manifest import assign_shards, check_image, check_nuclei, pool_of, sha256_file
from helpers.data.shards.index import (FORMAT_VERSION, INDEX_NAME, SHARD_SUFFIX, ShardError, file_problem,
                                       masks_fingerprint, new_index, read_index_or_empty, source_ids)
from helpers.data.shards.reader import INSTANCE_MAP_KEY, read_records
from helpers.image_codec import encode_png, mask_box, tf_decode_png


# --------------------------------------------------------------------------- one image -> one tf.Example
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
        if verify and not np.array_equal(tf_decode_png(png), m.view(np.uint8)):
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

        if not np.array_equal(tf_decode_png(instance_map_png, dtype=tf.uint16), labels):
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



# --------------------------------------------------------------------------- write_shards
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
    old = {e["file"]: e for e in read_index_or_empty(shards_dir)["shards"]}
    entries, todo = _plan(rows, items, source_ids(rows, ds), old, shards_dir, report)
    _remove_stale(old, rows, shards_dir, report)
    n_wanted = len(entries) + len(todo)
    index_path = shards_dir / INDEX_NAME
    _write_todo(todo, entries, n_wanted, dataset_root, index_path, workers, verify, progress, report)
    # 5. index.json, complete (already written after the last shard when there was one to write)
    index = new_index(dataset_root, entries, True, n_wanted)
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
        if same_content and file_problem(shards_dir, prev) is None:
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
        atomic_write_json(index_path, new_index(dataset_root, entries, False, n_wanted))
    bar = tqdm(total=sum(max(1, r["n_nuclei"]) for r, *_ in todo), desc="write shards", unit="mask",
               disable=not progress or not todo)
    try:
        for r, it, want, path in todo:
            bar.set_postfix_str(r["image_id"])
            entries.append(_write_shard(r, it, want, path, workers, verify, report))
            complete = len(entries) == n_wanted
            atomic_write_json(index_path, new_index(dataset_root, entries, complete, n_wanted))
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
    check_image(it, r)  # the manifest's checks: the image file's sha256 and size
    enc = _encode_item(it, workers, verify)
    check_nuclei(it, r, enc.empty)  # and its count of (non-empty) masks
    report.notes.extend(enc.notes)
    data = make_example(enc, r["image_id"], want["source_id"])
    try:
        with atomic_path(path, need=len(data)) as tmp:
            with tf.io.TFRecordWriter(str(tmp)) as w:
                w.write(data)
            if read_records(tmp, _own_temp=True) != [data]:
                raise ShardError(f"{tmp} does not read back as written (disk problem?); try again")
    except tf.errors.OpError as e:  # TensorFlow's own file errors: a full or read-only folder named
        raise (folder_error(e, path, len(data)) or e) from e
    report.written.append(path.name)
    return {**want, "size": path.stat().st_size, "sha256": sha256_file(path),
            "instance_map": enc.instance_map_png is not None}

