"""Quality on the real data: the workflow from scratch on ../shared/data/vrdl_hw3, scored on validation.

    python benchmarks/bench_quality.py                       # the default recipe ("chosen" levers)
    python benchmarks/bench_quality.py --name scale1.5 --scale 1.5
    python benchmarks/bench_quality.py --table               # the table of docs/quality.md from saved runs

What it runs, on this machine's CPU (profile ``cpu``), with notebooks 01-04's helpers:
* notebook 01: the dataset checked against the manifest and sharded, default validation split
  (4 of the 24 labelled images, stratified by organ);
* notebook 02: the heads stage **from scratch** (no pretrained weights are reachable here), a
  fixed ``--heads-steps``; notebook 03: the ``all`` stage, a fixed ``--all-steps``. The default
  steps are sized to about one CPU-hour on a 2-core machine;
* notebook 04: predictions of the validation images, plain and with ``--tta``, each also with
  mask NMS on every pass (the lever alone); each scored with pycocotools, and every rescoring
  recipe of ``helpers.infer.rescore`` (the learned ones leave-one-image-out) on the best of them
  by the leaderboard's AP50@100.

It prints, for the validation split: AP, AP50 and AP75 at maxDets 100 and 1000; the split's
ceiling (perfect masks) and AP50@100 as a percentage of it; the nuclei field's AJI, AJI+, PQ,
F1@0.5 and Dice of each prediction (detections scoring >= 0.5, ``helpers.infer.instance_metrics``); the losses at the start and the
end of each stage (against chance: ln 2 = 0.69 for the RPN's objectness); s/step, s/image and
wall time. Everything goes to ``benchmarks/results/quality/<name>.json`` with the commit, so
runs with different levers sit side by side (``--table``). The workspace lives outside the
project (``--root``); re-running a name resumes its training where it stopped.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from helpers.infer.evaluate import LEADERBOARD_METRIC as METRIC  # noqa: E402 - AP50@100
from helpers.infer.instance_metrics import TABLE_COLUMNS as FIELD_TABLE  # noqa: E402 - AJI, PQ, F1@0.5
from helpers.train.config import get_profile  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "vrdl_hw3"
RESULTS = REPO / "benchmarks" / "results" / "quality"
ROOT = Path(os.environ.get("TMPDIR", "/tmp")) / "nuclei-bench-quality"
PROFILE = "cpu"
# The cpu profile's from-scratch plan: about one CPU-hour on a 2-core machine at ~1.9 s/step (45 min at
# the 1.47 s/step of the input built on instance maps, docs/speed.md)
# (see docs/quality.md); 300 + 400 were an hour on the slower machine of the first runs (4.9-5.9 s/step).
_PLAN = get_profile(PROFILE, from_scratch=True).steps
HEADS_STEPS, ALL_STEPS = _PLAN["heads"], _PLAN["all"]
TTA = ("hflip", "vflip")
ZOOM = ("zoom125",)
TABLE_COLUMNS = ("AP@100", "AP50@100", "AP75@100", "AP@1000", "AP50@1000", "AP75@1000")
# the nuclei field's metrics (helpers.infer.instance_metrics), of each prediction without rescoring
FIELD_COLUMNS = ("AJI", "AJI+", "PQ", "F1@0.5", "Dice")
MASK_NMS_IOU = 0.5


def _commit() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "helpers"],
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def levers(args) -> dict:
    """Profile knobs of this run (what differs from the cpu profile, besides from_scratch)."""
    out = {}
    if args.scale != 1.0:
        out["scale"] = args.scale
    if args.stain:
        out["stain_jitter"] = args.stain
    for kv in args.set or ():
        k, v = kv.split("=", 1)
        out[k] = json.loads(v)
    return out


# --------------------------------------------------------------------------- notebook 01
def split_name(holdout: str | None) -> str:
    """The name of a run's split: "default", or "holdout-<organ>"."""
    return f"holdout-{holdout}" if holdout else "default"


def holdout_val_ids(rows, organ: str) -> list[str]:
    """Validation ids that hold ``organ`` out of training: every labelled image of that organ,
    plus the default split's validation images of the other organs (so the seen organs are
    scored on the same images as the default split's runs)."""
    organs = {r["organ"] for r in rows if r["split"] != "test"}
    if organ not in organs:
        raise SystemExit(f"--holdout {organ!r}: the labelled organs are {sorted(organs)}")
    return sorted(r["image_id"] for r in rows
                  if r["split"] != "test" and (r["organ"] == organ or r["split"] == "val"))


def _base(root: Path, split: str) -> Path:
    return root / ("base" if split == "default" else f"base-{split}")


def prepare(root: Path, data: Path, holdout: str | None = None):
    """The sharded dataset with the default split (or one organ held out of training), once per
    ``root`` and split (shared by every run of that split)."""
    from helpers.data import manifest as mf
    from helpers.data import prepare as prep
    from helpers.data import shards
    from helpers.workspace import get_workspace

    ws = get_workspace(_base(root, split_name(holdout)))
    try:
        shards.load_index(ws.shards)  # complete: every shard written
        return ws
    except Exception:  # noqa: BLE001 - absent or incomplete: notebook 01's steps (they resume)
        pass
    dataset_root, manifest = prep.get_dataset(ws, str(data), PROFILE)
    rows = prep.check_dataset(dataset_root, manifest)
    val_ids = holdout_val_ids(mf.read_manifest(manifest), holdout) if holdout else None
    rows = prep.choose_split(ws, rows, val_ids=val_ids)
    shards.write_shards(dataset_root, rows, ws.shards, progress=False)
    return ws


def run_workspace(root: Path, name: str, split: str = "default"):
    """The run's own workspace, reading the shared shards of its split (no copy). A run made
    before keeps the split it was made with."""
    from helpers.workspace import get_workspace

    base = get_workspace(_base(root, split))
    ws = get_workspace(root / "runs" / name)
    ws.root.mkdir(parents=True, exist_ok=True)
    if not ws.shards.is_symlink():
        if ws.shards.is_dir():
            ws.shards.rmdir()  # the empty folder get_workspace made
        ws.shards.symlink_to(base.shards, target_is_directory=True)
    ws.data.mkdir(parents=True, exist_ok=True)
    manifest = ws.data / "manifest.csv"
    if not manifest.exists():
        manifest.write_bytes((base.data / "manifest.csv").read_bytes())
    return ws


def trained_run(root: Path, name: str):
    """The workspace of a run whose ``all`` stage exists, for the benchmarks that build on one
    (bench_specialists, bench_tiling); SystemExit with what to run first otherwise."""
    ws = run_workspace(root, name)
    if not (ws.checkpoints / "all").is_dir():
        raise SystemExit(f"run {name!r} has no 'all' stage under {ws.root}: "
                         f"run benchmarks/bench_quality.py --name {name} first")
    return ws


def save_result(results: Path, name: str, res: dict) -> Path:
    from helpers.atomic import atomic_write_json

    results.mkdir(parents=True, exist_ok=True)
    out = results / f"{name}.json"
    atomic_write_json(out, res)
    return out


# --------------------------------------------------------------------------- notebooks 02-03
def loss_summary(ws, stage: str, n: int = 20) -> dict:
    """Mean of each loss over the stage's first and last ``n`` logged steps."""
    from helpers.train import curves

    c = curves.read_curves(ws, stage)
    out = {}
    for k in ("rpn_score_loss", "rpn_box_loss", "frcnn_cls_loss", "mask_loss", "total_loss"):
        if k in c:
            vals = list(c[k][1])
            out[k] = {"first": sum(vals[:n]) / len(vals[:n]), "last": sum(vals[-n:]) / len(vals[-n:])}
    return out


def save_curves(ws, name: str, results: Path) -> Path:
    """Both stages' loss curves side by side, with chance for the RPN objectness (ln 2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from helpers.train import curves

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, stage in zip(axes, ("heads", "all")):
        curves.plot_curves(ws, stage, ax=ax, show_lr=False)
        ax.axhline(math.log(2), color="red", ls="--", lw=1, label="ln 2 (RPN at chance)")
        ax.legend(fontsize=7)
    fig.suptitle(f"bench_quality {name}: profile {PROFILE} from scratch")
    fig.tight_layout()
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"{name}.curves.png"
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def stage_timing(ws, stage: str) -> dict:
    """s/step and seconds of a stage's training, from its TensorBoard event times (so a
    re-run that finds the stage finished still reports how long it took)."""
    from helpers.train import curves

    rows = sorted((r[0], r[2]) for f in curves.event_files(ws, stage) for r in curves._read_file(f)
                  if r[3] == "total_loss")
    walls = [w for _, w in rows]
    diffs = [b - a for a, b in zip(walls[1:], walls[2:])]  # the first step includes tracing
    return {"s_per_step": sum(diffs) / len(diffs) if diffs else None,
            "seconds": walls[-1] - walls[0] if walls else None}


def train(ws, args) -> dict:
    from helpers.train import training

    out = {}
    for stage, steps, kw in (("heads", args.heads_steps, {"from_scratch": True}),
                             ("all", args.all_steps, {})):
        res = training.train_stage(stage, PROFILE, ws, steps=steps, checkpoint_every=50,
                                   progress=not args.quiet, **kw, **levers(args))
        out[stage] = {"steps": res.planned_steps, "end_step": res.end_step, "status": res.status,
                      **stage_timing(ws, stage), "losses": loss_summary(ws, stage)}
    return out


def _rescoring_of(previous: Path, trained: dict) -> dict | None:
    """The previous result when this run is a re-scoring (every stage was already finished,
    so predictions come from the cache): its training commit and prediction time still hold."""
    if not previous.is_file() or any(t["status"] != "skipped (already finished)" for t in trained.values()):
        return None
    return json.loads(previous.read_text())


# --------------------------------------------------------------------------- notebook 04
def evaluate(ws, args) -> dict:
    from helpers.data.manifest import workspace_manifest
    from helpers.infer import evaluate as ev
    from helpers.infer import instance_metrics, predict, rescore
    from helpers.infer.fusion import merge_detections

    val_ids = predict.image_ids_of(ws, "val")
    gt = predict.shard_ground_truth(ws, val_ids)
    t0 = time.perf_counter()
    _, parts = predict.predict_stage(ws, "all", val_ids, tta=args.tta + args.zoom, return_parts=True,
                                     progress=not args.quiet, stain="macenko" if args.stain_normalize else "none")
    n_pred = len(val_ids) * (1 + len(args.tta) + len(args.zoom))
    s_per_image = (time.perf_counter() - t0) / n_pred
    # levers alone and together: the geometric TTA merge, multi-scale views, and mask NMS on each
    # pass (a duplicate the model's box NMS let through) before the merge
    nms = {a: {i: merge_detections([d], "nms", MASK_NMS_IOU) for i, d in p.items()} for a, p in parts.items()}
    views = {"plain": ["plain"]}
    if args.tta:
        views["tta"] = ["plain", *args.tta]
    if args.zoom:
        views["tta+" + "+".join(args.zoom)] = ["plain", *args.tta, *args.zoom]
    variants = {}
    for name, augs in views.items():
        for suffix, source in (("", parts), ("+masknms", nms)):
            variants[name + suffix] = {i: (source["plain"][i] if len(augs) == 1 else
                                           merge_detections([source[a][i] for a in augs], "wmf", 0.5))
                                       for i in val_ids}
    scores = {k: {**ev.evaluate(v, gt, per_image=False).summary, **instance_metrics.score_images(v, gt).summary}
              for k, v in variants.items()}
    best = max(scores, key=lambda k: scores[k][METRIC])
    source = nms if best.endswith("+masknms") else parts
    augs = views[best.removesuffix("+masknms")]
    passes = {i: [source[a][i] for a in augs] for i in val_ids}
    cmp = rescore.compare_recipes(variants[best], gt, passes, metric=METRIC)
    print(cmp.format())
    n_dets = {i: len(d) for i, d in variants[best].items()}
    organs = {r["image_id"]: r["organ"] for r in workspace_manifest(ws) if r["image_id"] in gt}
    chosen = cmp.on_validation(variants[best], passes)  # what notebook 05 would submit and export
    return {"val_ids": val_ids, "organs": organs, "n_gt": {i: len(g) for i, g in gt.items()}, "n_dets": n_dets,
            "predict_s_per_image": s_per_image, "ceiling": ev.ceiling(gt), "metric": METRIC,
            "variants": scores, "best_variant": best,
            "rescoring": cmp.rows, "rescoring_chosen": cmp.chosen,
            "per_organ": per_organ(chosen, gt, organs),
            "segmentation": segmentation_report(chosen, gt, organs, args.holdout)}


def per_organ(preds, gt, organs) -> dict:
    """COCO AP and the split's ceiling of each organ's validation images."""
    from helpers.infer import evaluate as ev

    out = {}
    for organ in sorted(set(organs.values())):
        ids = [i for i in gt if organs[i] == organ]
        sub_gt = {i: gt[i] for i in ids}
        out[organ] = {"images": ids, **ev.evaluate({i: preds[i] for i in ids}, sub_gt, per_image=False).summary,
                      "ceiling AP50@100": ev.ceiling(sub_gt)["AP50@100"]}
    return out


def segmentation_report(preds, gt, organs, holdout: str | None) -> dict:
    """The exports' rule as notebook 04 chooses it (by PQ, on the validation images of the organs
    the model trained on), the field's metrics at it and at 0.5 per image, and how each kind of
    rule holds on images it was not chosen on: leave-one-image-out over the split, and, with an
    organ held out of training, chosen on the other organs and scored on it."""
    from helpers.infer import instance_metrics, thresholds
    from helpers.infer.segmentation import DEFAULT_RULE

    seen = [i for i in gt if organs[i] != holdout]
    unseen = [i for i in gt if organs[i] == holdout]
    choice = thresholds.choose_rule({i: preds[i] for i in seen}, {i: gt[i] for i in seen}, "PQ")
    print(choice.format())
    at = {name: instance_metrics.score_images(preds, gt, rule)
          for name, rule in (("chosen", choice.rule), ("0.5", DEFAULT_RULE))}
    out = {"rule": choice.rule.to_json(), "rule_described": choice.rule.describe(), "chosen_on": seen,
           "curve": choice.curve, "cuts": choice.cuts,
           **{f"at {name}": {"mean": s.summary, "per_image": s.per_image} for name, s in at.items()},
           "families": thresholds.compare_rule_families(
               preds, gt, "PQ", protocols={"leave-one-image-out": None,
                                           **({f"chosen on the other organs, scored on {holdout}": (seen, unseen)}
                                              if unseen else {})})}
    for protocol, rows in out["families"].items():
        for r in rows:
            print(f"  {protocol}: {r['rule']:18s} PQ {r['PQ']:.4f} (worst {r['worst PQ']:.4f})  AJI {r['AJI']:.4f} "
                  f"(worst {r['worst AJI']:.4f})  F1 {r['F1@0.5']:.4f}  kept worst {r['worst kept']:.2f}; "
                  f"on all: {r['chosen on all']}")
    return out


# --------------------------------------------------------------------------- report
def report(res: dict) -> str:
    ev = res["eval"]
    ceil = ev["ceiling"]["AP@100"]
    lines = [f"run {res['name']} (commit {res['commit']}): profile {PROFILE} from scratch, "
             f"levers {res['levers'] or 'none'}, steps heads {res['train']['heads']['steps']} + "
             f"all {res['train']['all']['steps']}"]
    for stage, t in res["train"].items():
        losses = ", ".join(f"{k} {v['first']:.3f} -> {v['last']:.3f}" for k, v in t["losses"].items())
        lines.append(f"  {stage}: {t['s_per_step'] or float('nan'):.2f} s/step; {losses}")
    lines.append(f"  (chance for the RPN objectness loss: ln 2 = {math.log(2):.3f})")
    ceil50 = ev["ceiling"]["AP50@100"]
    lines.append(f"  validation: {len(ev['val_ids'])} images, {sum(ev['n_gt'].values())} nuclei; "
                 f"ceiling (perfect masks) AP50@100 {ceil50:.4f}, AP@100 {ceil:.4f}")
    for k, s in ev["variants"].items():
        lines.append(f"  {k:14s} " + "  ".join(f"{c} {s[c]:.4f}" for c in TABLE_COLUMNS + FIELD_COLUMNS if c in s)
                     + f"  AP50@100 = {100 * s['AP50@100'] / ceil50:.1f}% of the ceiling")
    lines.append(f"  rescoring of {ev['best_variant']} by {ev.get('metric', 'AP@100')}: "
                 f"chosen {ev['rescoring_chosen']}")
    for r in ev["rescoring"]:
        lines.append(f"    {r['recipe']:24s} AP50@100 {r['AP50@100']:.4f} ({100 * r['AP50@100'] / ceil50:.1f}%)  "
                     f"AP@100 {r['AP@100']:.4f}  AP@1000 {r['AP@1000']:.4f}  AP50@1000 {r['AP50@1000']:.4f}")
    lines.append(f"  prediction {ev['predict_s_per_image']:.1f} s/image/pass; wall time "
                 f"{res['wall_s'] / 60:.1f} min (training {res['train_s'] / 60:.1f} min)")
    return "\n".join(lines)


def table(results_dir: Path = RESULTS, all_recipes_of: str = "default-s1") -> str:
    """Markdown, one row per (run, prediction, rescoring): each run's plain pass and TTA merge
    without rescoring (the lever alone), its better one with the recipe it chose, and every
    recipe for the ``all_recipes_of`` run (rescoring alone)."""
    head = ("| run | levers | prediction | rescoring | AP50@100 | AP50@100 / ceiling | AP@100 | AP75@100 "
            "| AP@1000 | AP50@1000 | AJI | PQ | F1@0.5 | s/step | s/image/pass |\n|" + "---|" * 15)
    rows = []
    for p in sorted(results_dir.glob("*.json")):
        r = json.loads(p.read_text())
        ev = r["eval"]
        ceil = ev["ceiling"]["AP50@100"]
        sps = sum(t["s_per_step"] * t["steps"] for t in r["train"].values()) / sum(
            t["steps"] for t in r["train"].values())
        lev = ", ".join(f"{k}={v}" for k, v in r["levers"].items()) or "-"
        wanted = ({x["recipe"] for x in ev["rescoring"]} if r["name"] == all_recipes_of
                  else {"none", ev["rescoring_chosen"]})
        others = [(v, {"recipe": "none", **sc}) for v, sc in ev["variants"].items() if v != ev["best_variant"]]
        plain = ev["variants"][ev["best_variant"]]  # the field's metrics of the unrescored prediction
        best = [(ev["best_variant"], {**plain, **x} if x["recipe"] == "none" else x)
                for x in ev["rescoring"] if x["recipe"] in wanted]
        for variant, x in others + best:
            mark = " (chosen)" if (variant == ev["best_variant"] and x["recipe"] == ev["rescoring_chosen"]) else ""
            rows.append(f"| {r['name']} | {lev} | {variant} | {x['recipe']}{mark} "
                        f"| {x['AP50@100']:.4f} | {100 * x['AP50@100'] / ceil:.1f}% of {ceil:.3f} "
                        f"| {x['AP@100']:.4f} | {x['AP75@100']:.4f} | {x['AP@1000']:.4f} | {x['AP50@1000']:.4f} "
                        + "".join(f"| {x[c]:.4f} " if c in x else "| - " for c in FIELD_TABLE)
                        + f"| {sps:.1f} "
                        f"| {ev['predict_s_per_image']:.1f} |")
    return "\n".join([head, *rows])


def exports_table(results_dir: Path = RESULTS) -> str:
    """Markdown, one row per run scored with its exports' rule: the rule chosen by PQ on the
    validation images of the organs it trained on, and the field's metrics at it and at 0.5 (mean
    and worst image), with the least share of an image's nuclei kept."""
    head = ("| run | rule chosen by PQ | | AJI | PQ | F1@0.5 | worst AJI | worst PQ | least share of nuclei kept |\n|"
            + "---|" * 9)
    rows = []
    for p in sorted(results_dir.glob("*.json")):
        r = json.loads(p.read_text())
        seg = r["eval"].get("segmentation")
        if not seg:
            continue
        for at in ("chosen", "0.5"):
            images = seg[f"at {at}"]["per_image"]
            m = seg[f"at {at}"]["mean"]
            rule = seg["rule_described"] if at == "chosen" else "score >= 0.5"
            rows.append(f"| {r['name']} | {rule} | {'chosen' if at == 'chosen' else 'at 0.5'} "
                        f"| {m['AJI']:.4f} | {m['PQ']:.4f} | {m['F1@0.5']:.4f} "
                        f"| {min(i['AJI'] for i in images):.4f} | {min(i['PQ'] for i in images):.4f} "
                        f"| {min(i['found'] / max(i['nuclei'], 1) for i in images):.0%} |")
    return "\n".join([head, *rows])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="baseline", help="run name (its workspace and result file)")
    ap.add_argument("--heads-steps", type=int, default=HEADS_STEPS)
    ap.add_argument("--all-steps", type=int, default=ALL_STEPS)
    ap.add_argument("--scale", type=float, default=1.0, help="Profile.scale: 1.0, 1.5 or 2.0")
    ap.add_argument("--stain", type=float, default=0.0, help="Profile.stain_jitter (0 = off)")
    ap.add_argument("--set", action="append", metavar="KNOB=JSON", help="another profile knob")
    ap.add_argument("--tta", default=",".join(TTA), help="comma-separated test-time augmentations")
    ap.add_argument("--zoom", default=",".join(ZOOM), help="comma-separated multi-scale views (a lever)")
    ap.add_argument("--holdout", metavar="ORGAN", help="hold this organ's images out of training and "
                    "score them beside the other organs' default validation images")
    ap.add_argument("--stain-normalize", action="store_true", help="predict the validation images "
                    "Macenko-normalised to the training images' stain (torchstain); saved as <name>+macenko")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--root", type=Path, default=ROOT, help="benchmark workspaces (outside the project)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--table", action="store_true", help="print the table of saved runs and exit")
    ap.add_argument("--curves", action="store_true", help="(re)draw the run's loss curves and exit")
    args = ap.parse_args(argv)
    args.tta = tuple(t for t in args.tta.split(",") if t)
    args.zoom = tuple(t for t in args.zoom.split(",") if t)
    if args.table:
        print(table(args.results))
        print()
        print(exports_table(args.results))
        return 0
    if args.curves:
        print(save_curves(run_workspace(args.root, args.name), args.name, args.results))
        return 0
    if not (args.data / "train").is_dir():
        print(f"{args.data} not found: this benchmark needs the real dataset beside the project "
              "(../shared/data/vrdl_hw3)", file=sys.stderr)
        return 2

    from helpers import colab

    colab.quiet()
    commit = _commit()  # the code training imports; helpers imported later may be newer
    t0 = time.perf_counter()
    prepare(args.root, args.data, args.holdout)
    ws = run_workspace(args.root, args.name, split_name(args.holdout))
    t1 = time.perf_counter()
    trained = train(ws, args)
    t2 = time.perf_counter()
    print(f"loss curves: {save_curves(ws, args.name, args.results)}")
    scored_at = _commit()  # prediction and scoring import the code as it is now
    result_name = args.name + ("+macenko" if args.stain_normalize else "")
    prev = _rescoring_of(args.results / f"{result_name}.json", trained)
    if prev:
        commit = prev.get("train_commit", prev["commit"])
    res = {"name": result_name, "commit": scored_at, "date": time.strftime("%Y-%m-%d %H:%M"),
           "profile": PROFILE, "from_scratch": True, "levers": levers(args),
           "split": split_name(args.holdout),
           "tta": list(args.tta), "zoom": list(args.zoom),
           **({"train_commit": commit} if commit != scored_at else {}),
           "train": trained, "eval": evaluate(ws, args),
           "train_s": sum(t["seconds"] or 0 for t in trained.values()),
           "wall_s": time.perf_counter() - t0, "machine": f"{os.cpu_count()} CPU cores"}
    if prev:  # cached predictions time nothing: keep the measured model pass
        res["eval"]["predict_s_per_image"] = prev["eval"]["predict_s_per_image"]
    out = save_result(args.results, result_name, res)
    print(report(res))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
