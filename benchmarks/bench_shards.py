"""Benchmark: one epoch of the training set (each image with all its masks),
read from the course folder layout vs read from the TFRecord shards.

    python benchmarks/bench_shards.py [--data PATH] [--shards DIR] [--workers N]

* folder: the natural read, one PIL decode per PNG (image + every mask file),
  masks stacked to an (N, H, W) bool array.
* shards, Model Garden path: tf.data over the shard files, parse, and decode
  every ``image/object/mask`` PNG with ``tf.io.decode_png`` (the op Model
  Garden's TfExampleDecoder uses), all masks of an image in parallel
  (num_parallel_calls=AUTOTUNE). This is what training pays per image.
* shards, fast path: ``read_shard(path, fast=True)``: one 16-bit instance-map
  PNG per image expanded to the same (N, H, W) bool masks.

Shards are written to a temp dir unless ``--shards`` points at valid ones.
Prints the times and the ratios measured in this run (no assertions).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("NUCLEI_REAL_DATA", REPO.parent / "shared" / "data" / "vrdl_hw3"))


def read_folder_epoch(items) -> tuple[float, int]:
    t = time.perf_counter()
    n = 0
    for it in items:
        img = np.asarray(Image.open(it.image_path).convert("RGB"))
        masks = np.stack([np.asarray(Image.open(p)) > 0 for p in it.mask_paths])
        assert masks.shape[1:] == img.shape[:2]
        n += len(masks)
    return time.perf_counter() - t, n


def read_shards_tf_epoch(files) -> tuple[float, int]:
    import tensorflow as tf

    spec = {"image/encoded": tf.io.FixedLenFeature((), tf.string),
            "image/object/mask": tf.io.VarLenFeature(tf.string)}

    @tf.autograph.experimental.do_not_convert
    def parse(rec):
        f = tf.io.parse_single_example(rec, spec)
        img = tf.io.decode_png(f["image/encoded"], channels=3)
        return img, tf.sparse.to_dense(f["image/object/mask"], default_value="")

    @tf.autograph.experimental.do_not_convert
    def decode_mask(png):
        return tf.io.decode_png(png, channels=1)[..., 0]

    ds = tf.data.TFRecordDataset([str(p) for p in files]).map(parse, num_parallel_calls=2).prefetch(1)
    t = time.perf_counter()
    n = 0
    for img, pngs in ds:  # every mask PNG of the image decoded in parallel, stacked (N, H, W)
        masks = (tf.data.Dataset.from_tensor_slices(pngs).map(decode_mask, num_parallel_calls=tf.data.AUTOTUNE)
                 .batch(1 << 16).get_single_element())
        m = masks.numpy().view(bool)  # values are 0/1
        n += len(m)
    return time.perf_counter() - t, n


def read_shards_fast_epoch(files) -> tuple[float, int]:
    from helpers.data.shards import read_shard

    t = time.perf_counter()
    n = 0
    for p in files:
        d = read_shard(p, fast=True)
        n += len(d["masks"])
    return time.perf_counter() - t, n


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="dataset root (course layout)")
    ap.add_argument("--shards", type=Path, default=None, help="existing shards dir (else a temp dir)")
    args = ap.parse_args(argv)

    from helpers.data.dataset import open_dataset
    from helpers.data.manifest import REPO_MANIFEST, build_manifest, read_manifest, validate_against_manifest
    from helpers.data.shards import load_index, select_shards, write_shards

    ds = open_dataset(args.data)
    try:
        rows = read_manifest(REPO_MANIFEST)
        validate_against_manifest(args.data, rows, progress=False)
    except Exception:
        rows = build_manifest(args.data, check_pixels=False, progress=False)
    tmp = None
    shards = args.shards
    if shards is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_shards_")
        shards = Path(tmp.name)
    t = time.perf_counter()
    write_shards(args.data, rows, shards, verbose=True)
    print(f"write_shards: {time.perf_counter() - t:.1f}s (0 if they were already there and valid)")
    files = select_shards(shards, splits=("train", "val"))
    ids = {e["image_id"] for e in load_index(shards)["shards"] if e["split"] in ("train", "val")}
    items = [it for it in ds.train if it.image_id in ids]
    print(f"epoch: {len(items)} images, {sum(it.n_nuclei for it in items)} masks, {os.cpu_count()} CPUs")

    t_folder, n1 = read_folder_epoch(items)
    print(f"folder layout (PIL, one PNG per file):          {t_folder:7.1f}s  ({n1} masks)")
    t_tf, n2 = read_shards_tf_epoch(files)
    print(f"shards, tf.data + tf.io.decode_png per mask:    {t_tf:7.1f}s  ({n2} masks)  "
          f"-> {t_folder / t_tf:5.1f}x faster")
    t_fast, n3 = read_shards_fast_epoch(files)
    print(f"shards, instance map (read_shard fast=True):    {t_fast:7.1f}s  ({n3} masks)  "
          f"-> {t_folder / t_fast:5.1f}x faster")
    assert n1 == n2 == n3
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
