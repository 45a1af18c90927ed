"""Checking shards bit for bit against their sources, as Model Garden decodes them."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

import numpy as np

from helpers.data.dataset import nonempty_mask_paths, open_dataset, read_image, read_mask
from helpers.data.shards.index import INDEX_NAME, ShardError, file_problem, load_index
from helpers.data.shards.reader import INSTANCE_MAP_KEY, example_boxes, read_records
from helpers.image_codec import mask_box, tf_decode_png


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
            problem = file_problem(shards_dir, e)
            if problem:
                raise ShardError(f"{path} does not match {INDEX_NAME} ({problem}); re-run write_shards")
            it = items.get(e["image_id"])
            if it is None:
                raise ShardError(f"{path} holds {e['image_id']}, which is not in {dataset_root}")
            (rec,) = read_records(path)
            f = tf.train.Example.FromString(rec).features.feature
            src_img = read_image(it.image_path)
            img = tf_decode_png(f["image/encoded"].bytes_list.value[0], channels=3)
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
                labels = tf_decode_png(f[INSTANCE_MAP_KEY].bytes_list.value[0], dtype=tf.uint16)

            def check(i: int) -> None:
                g = tf_decode_png(pngs[i])  # what Model Garden does
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
