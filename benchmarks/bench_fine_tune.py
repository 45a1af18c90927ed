"""Fine-tuning a trained model on a few images of your own, against training from scratch.

    python benchmarks/bench_fine_tune.py --course <workspace with a trained `all` stage>

A user with a few annotated images: the course data's validation images (those the course model
never trained on), stored as image + label pairs, the layout StarDist and Cellpose users keep.
Notebook 01's steps import them (half for training, half for validation); then three models are
scored on the user's validation images, the same steps for the two that train:

* ``course as it is``: the course model (``--course``'s ``all`` stage), not trained further;
* ``fine-tuned``: a heads stage started from it (``start_from``), then the ``all`` stage;
* ``from scratch``: the same two stages from random weights (no pretrained download is needed).

It prints AP, AP50 (at maxDets 100), the field's PQ and F1@0.5 of each, with wall times, and saves
them to ``benchmarks/results/fine_tune.json``. Workspaces live outside the project (``--root``);
re-running resumes the training where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data" / "vrdl_hw3"
ROOT = Path(os.environ.get("TMPDIR", "/tmp")) / "nuclei-bench-fine-tune"
RESULT = REPO / "benchmarks" / "results" / "fine_tune.json"
PROFILE = "cpu"

from bench_quality import stage_timing  # noqa: E402 - s/step from a stage's TensorBoard events


def user_pairs(course_ws, data: Path, out: Path) -> Path:
    """The course workspace's validation images as label pairs under ``out`` (made once)."""
    from helpers.data.label_images import export_label_pairs
    from helpers.data.manifest import workspace_manifest

    if (out / "images").is_dir():
        return out
    ids = [r["image_id"] for r in workspace_manifest(course_ws) if r["split"] == "val"]
    course = Path(tempfile.mkdtemp(prefix="course-subset-"))
    for image_id in ids:
        (course / "train").mkdir(exist_ok=True)
        (course / "train" / image_id).symlink_to(data / "train" / image_id, target_is_directory=True)
    export_label_pairs(course, out, pixel_size_um=0.25)
    shutil.rmtree(course)
    return out


def user_workspace(root: Path, pairs: Path):
    """Notebook 01 on the user's pairs: imported, half of them for validation, sharded."""
    from helpers.data import prepare as prep
    from helpers.data import shards
    from helpers.workspace import get_workspace

    ws = get_workspace(root / "user")
    dataset_root, manifest = prep.get_dataset(ws, str(pairs), PROFILE)
    rows = prep.check_dataset(dataset_root, manifest)
    ids = sorted(r["image_id"] for r in rows)
    rows = prep.choose_split(ws, rows, val_ids=ids[len(ids) // 2:])
    shards.write_shards(dataset_root, rows, ws.shards, progress=False)
    return ws


def arm_workspace(root: Path, user, name: str, checkpoints: Path | None = None):
    """An arm's workspace reading the user's shards and split (and, for the course model as it
    is, its checkpoints), without copying them."""
    from helpers.workspace import get_workspace

    ws = get_workspace(root / name)
    for link, target in ((ws.shards, user.shards), (ws.checkpoints, checkpoints)):
        if target is not None and not link.is_symlink():
            shutil.rmtree(link)
            link.symlink_to(target, target_is_directory=True)
    ws.data.mkdir(parents=True, exist_ok=True)
    (ws.data / "manifest.csv").write_bytes((user.data / "manifest.csv").read_bytes())
    return ws


def train(ws, heads_steps: int, all_steps: int, **heads_kwargs) -> dict:
    """Train both stages (a finished one is skipped); their s/step and seconds, as trained."""
    from helpers.train import training

    training.train_stage("heads", PROFILE, ws, steps=heads_steps, progress=False, **heads_kwargs)
    training.train_stage("all", PROFILE, ws, steps=all_steps, progress=False)
    return {stage: stage_timing(ws, stage) for stage in ("heads", "all")}


def score(ws) -> dict:
    from helpers.infer import evaluate as ev
    from helpers.infer import instance_metrics, predict

    val_ids = predict.image_ids_of(ws, "val")
    gt = predict.shard_ground_truth(ws, val_ids)
    preds = predict.predict_stage(ws, "all", val_ids, tta=[], progress=False)
    return {**ev.evaluate(preds, gt, per_image=False).summary, **instance_metrics.score_images(preds, gt).summary,
            "val_ids": val_ids, "n_gt": sum(len(g) for g in gt.values())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--course", type=Path, default=Path("/work/bench/runs/sched2350-s1"),
                    help="a workspace whose `all` stage was trained on the course data (cpu profile)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--root", type=Path, default=ROOT)
    ap.add_argument("--heads-steps", type=int, default=100)
    ap.add_argument("--all-steps", type=int, default=150)
    args = ap.parse_args(argv)
    from helpers.workspace import get_workspace

    course = get_workspace(args.course)
    user = user_workspace(args.root, user_pairs(course, args.data, args.root / "my_annotations"))
    arms, timing = {}, {}
    as_is = arm_workspace(args.root, user, "course-as-is", checkpoints=course.checkpoints)
    arms["course as it is"] = as_is
    tuned = arm_workspace(args.root, user, "fine-tuned")
    timing["fine-tuned"] = train(tuned, args.heads_steps, args.all_steps,
                                  start_from=str(course.checkpoints / "all"))
    arms["fine-tuned"] = tuned
    scratch = arm_workspace(args.root, user, "from-scratch")
    timing["from scratch"] = train(scratch, args.heads_steps, args.all_steps, from_scratch=True)
    arms["from scratch"] = scratch
    results = {name: {**score(ws), "training": timing.get(name, {})} for name, ws in arms.items()}
    cols = ("AP@100", "AP50@100", "PQ", "F1@0.5")
    print(f"{'model':18s} " + " ".join(f"{c:>9s}" for c in cols) + "  training (heads + all)")
    for name, r in results.items():
        minutes = sum(t["seconds"] or 0 for t in r["training"].values()) / 60
        print(f"{name:18s} " + " ".join(f"{r[c]:9.4f}" for c in cols) + (f"  {minutes:.1f} min" if minutes else "  none"))
    first = next(iter(results.values()))
    print(f"user data: {len(first['val_ids'])} validation images ({first['n_gt']} nuclei); "
          f"{args.heads_steps} + {args.all_steps} steps for each model that trains (profile {PROFILE})")
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps({"steps": [args.heads_steps, args.all_steps], "course": str(args.course),
                                  "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
