"""Benchmark the model-independent evaluation code (not a test; prints figures).

    python benchmarks/bench_eval.py [--masks 2400] [--dets 1000] [--repeat 3]

1. RLE encode + bbox of N full-size 1000x1000 masks (target <= 2 s for 2,400),
   next to the naive pycocotools call on the whole Fortran-transposed stack
   (measured in the same run), and the crop path that never builds full masks.
2. Merge of 2 models x 1,000 detections on a 1000x1000 image (nuclei ~30 px):
   mask NMS and weighted mask fusion.
3. Also: COCO segm evaluation of one image (~400 GT, 1,000 detections, maxDets
   100 and 1000), overlap resolution of 1,000 masks, tile merge of 4 tiles.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pycocotools import mask as mask_utils  # noqa: E402

from helpers.detections import Detections  # noqa: E402
from helpers.rle import encode_crops, encode_masks, rle_bbox  # noqa: E402
from helpers.infer.fusion import merge_detections  # noqa: E402
from helpers.infer.evaluate import evaluate  # noqa: E402
from helpers.infer.submission import resolve_overlaps  # noqa: E402
from helpers.infer.tiling import merge_tiles, tile_grid  # noqa: E402

SIZE = 1000


def best_of(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def nuclei(n, rng, r_lo=8, r_hi=18):
    """Ellipse crops (~16-36 px across) and their top-left offsets in a 1000x1000 image."""
    crops, offsets = [], []
    for _ in range(n):
        ry, rx = rng.integers(r_lo, r_hi, 2)
        yy, xx = np.mgrid[-ry:ry + 1, -rx:rx + 1]
        crops.append((yy / ry) ** 2 + (xx / rx) ** 2 <= 1.0)
        cy, cx = rng.integers(r_hi, SIZE - r_hi, 2)
        offsets.append((int(cy - ry), int(cx - rx)))
    return crops, offsets


def jitter(crops, offsets, rng, px=2):
    return crops, [(y + int(rng.integers(-px, px + 1)), x + int(rng.integers(-px, px + 1))) for y, x in offsets]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--masks", type=int, default=2400)
    ap.add_argument("--dets", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)

    # ------------------------------------------------------------------ 1. encode
    crops, offsets = nuclei(args.masks, rng)
    full = np.zeros((args.masks, SIZE, SIZE), bool)
    for i, (c, (y, x)) in enumerate(zip(crops, offsets)):
        full[i, y:y + c.shape[0], x:x + c.shape[1]] = c

    def ours():
        rles = encode_masks(full)
        return rles, rle_bbox(rles)

    def naive():
        rles = []
        for s in range(0, args.masks, 64):
            rles += mask_utils.encode(np.asfortranarray(full[s:s + 64].transpose(1, 2, 0).astype(np.uint8)))
        return rles, mask_utils.toBbox(rles)

    def from_crops():
        rles = encode_crops(crops, offsets, (SIZE, SIZE))
        return rles, rle_bbox(rles)

    t_ours, (rles, _) = best_of(ours, args.repeat)
    t_naive, (ref, _) = best_of(naive, 1)
    t_crops, (rles_c, _) = best_of(from_crops, args.repeat)
    assert [r["counts"] for r in rles] == [r["counts"].decode() for r in ref] == [r["counts"] for r in rles_c]
    del full
    print(f"[encode] {args.masks} masks {SIZE}x{SIZE}, RLE + bbox (best of {args.repeat}):")
    print(f"  encode_masks (full masks, band runs)  : {t_ours:6.3f} s  = {args.masks / t_ours:7.0f} masks/s"
          f"  ({t_ours / 2.0:.2f} x the 2 s target)")
    print(f"  naive pycocotools on Fortran stack    : {t_naive:6.3f} s  -> ours is {t_naive / t_ours:.1f}x faster")
    print(f"  encode_crops (box crops, no full mask): {t_crops:6.3f} s  = {t_ours / t_crops:.1f}x faster than "
          "encode_masks")

    # ------------------------------------------------------------------ 2. merge
    n = args.dets
    c, o = nuclei(n, rng)
    a = Detections.from_crops(*jitter(c, o, rng), rng.random(n), (SIZE, SIZE))
    b = Detections.from_crops(*jitter(c, o, rng), rng.random(n), (SIZE, SIZE))
    print(f"[merge] 2 models x {n} detections, {SIZE}x{SIZE}, nuclei 16-36 px:")
    for method in ("nms", "wmf"):
        t, out = best_of(lambda: merge_detections([a, b], method=method, iou_threshold=0.5), args.repeat)
        print(f"  {method}: {t:6.3f} s  ({len(a) + len(b)} -> {len(out)} detections, "
              f"{t / (2 * n) * 1e3:.3f} ms per input detection)")

    # ------------------------------------------------------------------ 3. others
    gt_c, gt_o = nuclei(400, rng)
    gt = encode_crops(gt_c, gt_o, (SIZE, SIZE))
    pc, po = jitter(gt_c, gt_o, rng, 1)
    fc, fo = nuclei(n - 400, rng)
    pred = Detections.from_crops(pc + fc, po + fo, rng.random(n), (SIZE, SIZE))
    t, res = best_of(lambda: evaluate({"img": pred}, {"img": gt}), 1)
    print(f"[evaluate] 1 image, 400 GT x {n} detections, maxDets 100/1000 + per-image table: {t:6.3f} s "
          f"(AP@100={res.summary['AP@100']:.3f}, AP@1000={res.summary['AP@1000']:.3f})")
    t, out = best_of(lambda: resolve_overlaps(a), args.repeat)
    print(f"[resolve_overlaps] {n} masks: {t:6.3f} s ({len(out)} kept)")
    wins = tile_grid(SIZE, SIZE, tile=600, overlap=200)
    tiles = []
    for y0, x0, y1, x1 in wins:
        keep = [i for i, (cc, (y, x)) in enumerate(zip(c, o))
                if y < y1 and y + cc.shape[0] > y0 and x < x1 and x + cc.shape[1] > x0]
        part = []
        for i in keep:
            y, x = o[i]
            cy0, cx0 = max(0, y0 - y), max(0, x0 - x)
            cy1, cx1 = min(c[i].shape[0], y1 - y), min(c[i].shape[1], x1 - x)
            part.append((c[i][cy0:cy1, cx0:cx1], (y + cy0, x + cx0)))
        tiles.append(Detections.from_crops([p[0] for p in part], [p[1] for p in part],
                                           rng.random(len(part)), (SIZE, SIZE)))
    t, out = best_of(lambda: merge_tiles(tiles, wins), args.repeat)
    print(f"[merge_tiles] {len(wins)} tiles 600 px / 200 overlap, {sum(len(x) for x in tiles)} pieces of "
          f"{n} nuclei: {t:6.3f} s -> {len(out)} detections")


if __name__ == "__main__":
    main()
