"""Organ specialists on the real data, one validation image per organ, each scored without leakage.

    python benchmarks/bench_specialists.py --run long-s2      # after bench_quality.py --name long-s2

The lever of issue 18 that the HW3 report this workflow follows gained most from: fine-tune the
main model (a finished ``bench_quality`` run's ``all`` stage) on one organ's training images
(``specialist-<organ>``, the cpu profile's specialist steps, as notebook 03 does) and route that
organ's images to it (notebook 04's ``Router``).

The default validation split holds one image per organ (lung, kidney, prostate, breast), so the
view is leave-one-organ-out by construction: each organ's specialist trains on that organ's
*training* images only and is scored on the organ's validation image, which it never saw; the
other organs' images stay with the main model. Each organ is a separate trial, so the verdict
counts organs that gain, not one pooled figure on one split.

Prints per organ: AP50@100 and AP@1000 of the main model and of the specialist on that image (TTA
as notebook 04: plain, hflip, vflip, zoom125), then the routed split against the main model, with
``strategy.compare_strategies``' table. Results go to ``benchmarks/results/specialists/<run>.json``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_quality import PROFILE, ROOT, TTA, ZOOM, _commit, save_result, trained_run  # noqa: E402
from helpers.infer.evaluate import LEADERBOARD_METRIC as METRIC  # noqa: E402

COLUMNS = ("AP50@100", "AP@100", "AP@1000")
RESULTS = REPO / "benchmarks" / "results" / "specialists"  # apart from quality/, whose table globs *.json


def val_organs(ws) -> dict[str, str]:
    """``{image_id: organ}`` of the validation split, from the run's manifest."""
    from helpers.data.manifest import read_manifest

    return {r["image_id"]: r["organ"] for r in read_manifest(ws.data / "manifest.csv") if r["split"] == "val"}


def train_specialists(ws, organs, steps: int | None, quiet: bool) -> dict:
    from helpers.train import training

    out = {}
    for organ in organs:
        t0 = time.perf_counter()
        res = training.train_stage(f"specialist-{organ}", PROFILE, ws, steps=steps, organs=[organ],
                                   checkpoint_every=50, progress=not quiet)
        out[organ] = {"steps": res.planned_steps, "status": res.status, "seconds": time.perf_counter() - t0}
    return out


def score(preds: dict, gt: dict) -> dict:
    from helpers.infer import evaluate as ev

    s = ev.evaluate(preds, gt, per_image=False).summary
    return {k: s[k] for k in COLUMNS}


def run(ws, steps: int | None, tta, quiet: bool) -> dict:
    from helpers.infer import predict
    from helpers.infer.routing import Router
    from helpers.infer.strategy import compare_strategies

    organ_of = val_organs(ws)
    val_ids = sorted(organ_of)
    gt = predict.shard_ground_truth(ws, val_ids)
    trained = train_specialists(ws, sorted(set(organ_of.values())), steps, quiet)
    per_model = {"all": predict.predict_stage(ws, "all", val_ids, tta=tta, progress=not quiet)}
    for image_id, organ in organ_of.items():
        stage = f"specialist-{organ}"
        per_model[stage] = predict.predict_stage(ws, stage, [image_id], tta=tta, progress=not quiet)
    per_organ = {}
    for image_id, organ in sorted(organ_of.items(), key=lambda kv: kv[1]):
        one = {image_id: gt[image_id]}
        main = score({image_id: per_model["all"][image_id]}, one)
        spec = score({image_id: per_model[f"specialist-{organ}"][image_id]}, one)
        per_organ[organ] = {"image_id": image_id, "main": main, "specialist": spec,
                            "gain": {k: spec[k] - main[k] for k in COLUMNS}}
    routed = {i: per_model[f"specialist-{o}"][i] for i, o in organ_of.items()}
    router = Router(default="all", by_organ={o: f"specialist-{o}" for o in organ_of.values()},
                             organs=dict(organ_of))
    # compare needs every model to predict every image: each specialist's other images are the main model's
    filled = {m: {i: p.get(i, per_model["all"][i]) for i in val_ids} for m, p in per_model.items()}
    cmp = compare_strategies(filled, gt, router=router, metric=METRIC, progress=not quiet)
    return {"val_organs": organ_of, "trained": trained, "per_organ": per_organ,
            "split": {"main": score(per_model["all"], gt), "routed": score(routed, gt)},
            "compare": cmp.rows, "wins": sum(v["gain"][METRIC] > 0 for v in per_organ.values())}


def report(res: dict) -> str:
    lines = [f"specialists of run {res['run']} (commit {res['commit']}), TTA {res['tta']}, "
             f"steps {sorted({t['steps'] for t in res['trained'].values()})}"]
    for organ, v in res["per_organ"].items():
        lines.append(f"  {organ:9s} {v['image_id']}: " + "  ".join(
            f"{k} {v['main'][k]:.4f} -> {v['specialist'][k]:.4f} ({v['gain'][k]:+.4f})" for k in COLUMNS))
    m, r = res["split"]["main"], res["split"]["routed"]
    lines.append("  split, main -> routed: " + "  ".join(f"{k} {m[k]:.4f} -> {r[k]:.4f} ({r[k] - m[k]:+.4f})"
                                                        for k in COLUMNS))
    lines.append(f"  organs where the specialist gains {METRIC}: {res['wins']} of {len(res['per_organ'])}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a bench_quality run whose 'all' stage is finished")
    ap.add_argument("--steps", type=int, default=None, help="specialist steps (default: the cpu profile's)")
    ap.add_argument("--tta", default=",".join(TTA + ZOOM))
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    ws = trained_run(args.root, args.run)
    from helpers import colab

    colab.quiet()
    tta = tuple(t for t in args.tta.split(",") if t)
    res = {"run": args.run, "commit": _commit(), "tta": list(tta), **run(ws, args.steps, tta, args.quiet)}
    print(report(res))
    print(f"written {save_result(args.results, args.run, res)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
