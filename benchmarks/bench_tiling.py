"""Large images on the real data: seams, speed and memory of tiled prediction (notebook 06).

    python benchmarks/bench_tiling.py --run long-s2        # a finished bench_quality run's 'all' stage

Four measurements, printed and written to ``benchmarks/results/tiling/<run>.json``:

* **Seams.** A 2 x 2 mosaic (2000 x 2000) of the 4 validation images is predicted in tiles of
  ``--tile`` px overlapping by ``--overlap``, stitched by ``tiling.merge_tiles``, and compared
  with the 4 images each predicted whole. The default tile is the images' own size (1000 px): the
  mosaic's 9 tiles start at 0, 500 and 1000, so seams cross the middle of every image and the
  model sees as much context per tile as on a whole image; only the seams differ. Nuclei scoring
  >= 0.5 are matched one to one by mask IoU >= 0.5. Counted: matched, missing (whole only),
  extra (stitched only), all of them and those along a seam (a box reaching into a zone two
  tiles share), and pairs with mask IoU > 0.5 on each side (the model's own repeats are in the
  whole images too; more of them stitched would be nuclei two tiles both kept). Target (issue
  16): no duplicates, and the same count within 1%.
* **The tile the model sees** (``--quality-tiles``): validation AP, F1, AJI and PQ of the images
  predicted whole and in smaller tiles; a model that finds more in small tiles shows it here,
  apart from the stitching.
* **Speed.** The mosaic's tiled prediction time against its number of tiles times one tile's
  prediction time (the median of 3 tiles of the same size): target <= 1.15.
* **Memory.** Peak RSS of a fresh process predicting and exporting (notebook 06's
  ``TiledPredictor`` and ``exports.export_image``) a 4000 x 4000 mosaic of 16 labelled images,
  against the same process on one 1000 x 1000 image: the growth is the image and its outputs,
  not its tiles. ``--no-memory`` keeps the previous run's figures.

The plain pass only (no test-time augmentation): each augmentation repeats the same tiling.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_quality import ROOT, _commit, run_workspace, save_result, trained_run  # noqa: E402

import numpy as np  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "tiling"
MIN_SCORE = 0.5


def mosaic(images: list[np.ndarray], per_side: int) -> np.ndarray:
    rows = [np.hstack(images[r * per_side:(r + 1) * per_side]) for r in range(per_side)]
    return np.ascontiguousarray(np.vstack(rows))


def _match(a, b, iou_min: float = 0.5) -> list[tuple[int, int]]:
    """One-to-one pairs (i in a, j in b) by mask IoU >= iou_min, best first."""
    from helpers.rle import rle_iou

    if not len(a) or not len(b):
        return []
    iou = rle_iou(a.rles, b.rles)
    pairs, ua, ub = [], set(), set()
    for i, j in sorted(np.argwhere(iou >= iou_min).tolist(), key=lambda p: -iou[p[0], p[1]]):
        if i not in ua and j not in ub:
            ua.add(i)
            ub.add(j)
            pairs.append((i, j))
    return pairs


def along_seams(dets, windows) -> np.ndarray:
    from helpers.infer.tiling import _in_zone, _shared_zones

    near = np.zeros(len(dets), bool)
    for _, _, zone in _shared_zones(windows):
        near[_in_zone(dets.boxes, zone, np.ones(len(dets), bool))] = True
    return near


def against_truth(dets, truth_rles: list) -> dict:
    """The mosaic's prediction scored on its ground truth: COCO AP and F1@0.5."""
    from helpers.infer import evaluate as ev
    from helpers.infer import instance_metrics

    s = ev.evaluate({"mosaic": dets}, {"mosaic": truth_rles}, per_image=False).summary
    f = instance_metrics.score_images({"mosaic": dets}, {"mosaic": truth_rles}).summary
    return {**{k: s[k] for k in ("AP50@100", "AP50@1000", "AP@1000")},
            **{k: f[k] for k in ("F1@0.5", "precision@0.5", "recall@0.5", "AJI", "PQ")}}


def seams(model, params, images: list[np.ndarray], tile: int, overlap: int, truth: list | None = None) -> dict:
    from helpers.detections import Detections
    from helpers.rle import rle_iou
    from helpers.infer.model import predict_image
    from helpers.infer.predict import predict_detections
    from helpers.infer.tiling import merge_tiles, place_in_image, tile_grid

    big = mosaic(images, 2)
    side = images[0].shape[0]
    corners = [(0, 0), (0, side), (side, 0), (side, side)]
    t0 = time.perf_counter()
    whole_all = Detections.concat([place_in_image(predict_detections(model, params, im, tile=max(im.shape)), c,
                                                  big.shape[:2]) for im, c in zip(images, corners)])
    whole = whole_all.filter(MIN_SCORE)
    whole_s = time.perf_counter() - t0
    windows = tile_grid(*big.shape[:2], tile, overlap)
    predict_image(model, params, np.ascontiguousarray(big[:tile, :tile]))  # a new input size: traced once
    t0 = time.perf_counter()
    stitched_all = predict_detections(model, params, big, tile=tile, overlap=overlap)
    tiled_s = time.perf_counter() - t0
    stitched = stitched_all.filter(MIN_SCORE)
    one_tile = []
    for y0, x0, y1, x1 in windows[:3]:
        t0 = time.perf_counter()
        predict_image(model, params, np.ascontiguousarray(big[y0:y0 + tile, x0:x0 + tile]))
        one_tile.append(time.perf_counter() - t0)
    pairs = _match(stitched, whole)
    seam_s, seam_w = along_seams(stitched, windows), along_seams(whole, windows)
    got_s = np.zeros(len(stitched), bool)
    got_w = np.zeros(len(whole), bool)
    for i, j in pairs:
        got_s[i], got_w[j] = True, True
    twins = {k: int(np.triu(rle_iou(d.rles, d.rles) > 0.5, k=1).sum()) if len(d) else 0
             for k, d in (("stitched", stitched), ("whole", whole))}
    one = statistics.median(one_tile)
    if truth is not None:  # each image's ground-truth RLEs, placed like its predictions
        truth = Detections.concat([place_in_image(Detections(list(t), np.ones(len(t)), im.shape[:2]), c, big.shape[:2])
                                   for t, im, c in zip(truth, images, corners)]).rles
        scored = {"whole": against_truth(whole_all, truth),
                  "stitched": against_truth(stitched_all, truth)}
    return {
        **({"against_truth": scored} if truth is not None else {}),
        "mosaic": list(big.shape[:2]), "tile": tile, "overlap": overlap, "tiles": len(windows),
        "whole": int(len(whole)), "stitched": int(len(stitched)), "matched": len(pairs),
        "count_diff_pct": 100.0 * (len(stitched) - len(whole)) / max(len(whole), 1),
        "missing": int((~got_w).sum()), "extra": int((~got_s).sum()),
        "seam_whole": int(seam_w.sum()), "seam_missing": int((~got_w & seam_w).sum()),
        "seam_extra": int((~got_s & seam_s).sum()),
        # pairs of nuclei with mask IoU > 0.5: the model's own repeats (in the whole images too)
        # and any nucleus two tiles both kept
        "twin_pairs_stitched": twins["stitched"], "twin_pairs_whole": twins["whole"],
        "whole_s": whole_s, "tiled_s": tiled_s, "one_tile_s": one,
        "speed_ratio": tiled_s / (len(windows) * one),
    }


def tile_quality(ws, model, params, sizes, overlap: int) -> dict:
    """COCO AP and F1@0.5 of the validation images predicted whole and in tiles of each size
    (plain pass): whether the tile the model sees changes what it finds (not the stitching)."""
    from helpers.infer import evaluate as ev
    from helpers.infer import instance_metrics, predict

    val = predict.image_ids_of(ws, "val")
    gt = predict.shard_ground_truth(ws, val)
    images = {i: predict.load_image(ws, i) for i in val}
    out = {}
    for t in [None, *sizes]:
        t0 = time.perf_counter()
        preds = {i: predict_detections_at(model, params, im, t, overlap) for i, im in images.items()}
        summary = ev.evaluate(preds, gt, per_image=False).summary
        field = instance_metrics.score_images(preds, gt).summary
        out["whole" if t is None else str(t)] = {
            **{k: summary[k] for k in ("AP50@100", "AP@100", "AP@1000", "AP50@1000")},
            **{k: field[k] for k in ("F1@0.5", "AJI", "PQ")},
            "nuclei>=0.5": int(sum((p.scores >= MIN_SCORE).sum() for p in preds.values())),
            "seconds": time.perf_counter() - t0}
    out["gt_nuclei"] = int(sum(len(g) for g in gt.values()))
    return out


def predict_detections_at(model, params, image, tile, overlap):
    from helpers.infer.predict import predict_detections

    return predict_detections(model, params, image, tile=tile or max(image.shape[:2]), overlap=overlap)


def _crop_rle(rle: dict, side: int) -> dict:
    """An RLE of an image cut to its top-left ``side`` x ``side`` (the mosaic's quarter)."""
    from pycocotools import mask as mask_utils

    m = mask_utils.decode(rle)
    if m.shape[:2] == (side, side):
        return rle
    return mask_utils.encode(np.asfortranarray(m[:side, :side]))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def memory_child(run: str, root: Path, n_side: int, out: Path) -> None:
    """In a fresh process: load the model, predict and export an n_side x n_side mosaic."""
    from helpers import colab

    colab.quiet()
    from helpers.infer import exports, predict
    from helpers.infer.model import load_model
    from helpers.infer.own_images import TiledPredictor

    ws = run_workspace(root, run)
    ids = [i for s in ("train", "val") for i in predict.image_ids_of(ws, s)][: n_side * n_side]
    images = [predict.load_image(ws, i)[:1000, :1000] for i in ids]
    model, params = load_model(ws, "all", min_score=0.0)
    predictor = TiledPredictor(model, params, tta=())
    predictor.predict(images[0][:256, :256])  # traced once: the model's own memory
    loaded = _rss_mb()
    big = mosaic(images, n_side)
    t0 = time.perf_counter()
    dets = predictor.predict(big)
    exported = exports.export_image(out.parent / f"exports-{n_side}", f"mosaic{n_side}", big, dets)
    json.dump({"side": int(big.shape[0]), "tiles": predictor.tiles(big.shape[:2]),
               "rss_after_load_mb": loaded, "peak_rss_mb": _rss_mb(), "seconds": time.perf_counter() - t0,
               "nuclei": exported.nuclei}, out.open("w"))


def memory(run: str, root: Path, tmp: Path) -> dict:
    out = {}
    for n_side in (1, 4):
        f = tmp / f"memory-{n_side}.json"
        subprocess.run([sys.executable, __file__, "--run", run, "--root", str(root), "--memory-child", str(n_side),
                        "--child-out", str(f)], check=True)
        out[str(n_side * 1000)] = json.loads(f.read_text())
    return out


def report(res: dict) -> str:
    s = res["seams"]
    lines = [f"tiling on run {res['run']} (commit {res['commit']}), plain pass, nuclei scoring >= {MIN_SCORE}",
             f"  seams: {s['mosaic'][0]} x {s['mosaic'][1]} mosaic of the 4 validation images, {s['tiles']} tiles of "
             f"{s['tile']} px overlapping by {s['overlap']}",
             f"    whole {s['whole']}, stitched {s['stitched']} ({s['count_diff_pct']:+.2f}%; target within 1%), "
             f"matched {s['matched']}, missing {s['missing']}, extra {s['extra']}",
             f"    along the seams: {s['seam_whole']} nuclei, {s['seam_missing']} missing, {s['seam_extra']} extra; "
             f"pairs with mask IoU > 0.5: stitched {s['twin_pairs_stitched']}, whole {s['twin_pairs_whole']} "
             "(the model's own; more when stitched = duplicates across seams)",
             f"  speed: {s['tiled_s']:.1f} s for {s['tiles']} tiles, one tile {s['one_tile_s']:.2f} s: "
             f"ratio {s['speed_ratio']:.3f} (target <= 1.15); the 4 images whole {s['whole_s']:.1f} s"]
    t = s.get("against_truth")
    if t:
        for k, v in t.items():
            lines.append(f"    against the ground truth, {k:8s}: " + "  ".join(f"{c} {v[c]:.4f}" for c in v))
    q = res.get("tile_quality")
    if q:
        lines.append(f"  the tile the model sees, on the 4 validation images ({q['gt_nuclei']} nuclei), plain pass:")
        for k, v in q.items():
            if k != "gt_nuclei":
                lines.append(f"    {k:6s} " + "  ".join(f"{c} {v[c]:.4f}" for c in
                                                     ("AP50@100", "AP@100", "AP@1000", "F1@0.5", "AJI", "PQ"))
                             + f"  nuclei>=0.5 {v['nuclei>=0.5']}  {v['seconds']:.0f} s")
    m = res.get("memory")
    if m:
        for side, v in m.items():
            lines.append(f"  memory {side} x {side}: {v['tiles']} tiles, peak RSS {v['peak_rss_mb']:.0f} MB "
                         f"(after loading the model {v['rss_after_load_mb']:.0f} MB), {v['seconds']:.0f} s, "
                         f"{v['nuclei']} nuclei exported")
        a, b = m["1000"], m["4000"]
        lines.append(f"  memory growth 1000 -> 4000 px (16x the pixels, {b['tiles']}x tiles): "
                     f"{b['peak_rss_mb'] - a['peak_rss_mb']:+.0f} MB")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--tile", type=int, default=1000, help="the seam test's tile: the images' own size, so "
                    "only the seams differ from predicting them whole")
    ap.add_argument("--quality-tiles", default="512,700", help="tile sizes whose validation AP is compared "
                    "with whole images (empty: skip)")
    ap.add_argument("--overlap", type=int, default=128)
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(args.run, args.root, args.memory_child, args.child_out)
        return 0
    ws = trained_run(args.root, args.run)
    from helpers import colab

    colab.quiet()
    from helpers.infer import predict
    from helpers.infer.model import load_model

    val = predict.image_ids_of(ws, "val")
    images = [predict.load_image(ws, i)[:1000, :1000] for i in val[:4]]
    gt = predict.shard_ground_truth(ws, val[:4])
    truth = [[_crop_rle(r, 1000) for r in gt[i]] for i in val[:4]]
    model, params = load_model(ws, "all", min_score=0.0)
    res = {"run": args.run, "commit": _commit(),
           "seams": seams(model, params, images, args.tile, args.overlap, truth)}
    sizes = [int(t) for t in args.quality_tiles.split(",") if t]
    previous = args.results / f"{args.run}.json"
    if sizes:
        res["tile_quality"] = tile_quality(ws, model, params, sizes, args.overlap)
    elif previous.is_file() and "tile_quality" in json.loads(previous.read_text()):
        res["tile_quality"] = json.loads(previous.read_text())["tile_quality"]  # measured before, kept
    if args.no_memory and previous.is_file() and "memory" in json.loads(previous.read_text()):
        res["memory"] = json.loads(previous.read_text())["memory"]  # measured before, kept
    elif not args.no_memory:
        tmp = ws.root / "bench_tiling"
        tmp.mkdir(exist_ok=True)
        res["memory"] = memory(args.run, args.root, tmp)
    print(report(res))
    print(f"written {save_result(args.results, args.run, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
