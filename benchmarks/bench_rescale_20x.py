"""20x images on a model trained at 40x: notebook 06 rescaling them to the model's pixel size, or not.

    python benchmarks/bench_rescale_20x.py [WORKSPACE]     # a trained workspace, default ../bench/runs/sched2350-s1

The workspace is a finished ``bench_quality.py`` run (its stage ``all``, trained on the course's
40x images, 0.25 µm/px). Each of its validation images (``data/manifest.csv``, split ``val``) is
read from the real data (``--data``), and a 20x copy is made of it (half the pixels a side, cv2
INTER_AREA). In a temporary folder outside the project, notebook 06's ``predict_own_images``
predicts, with the stage's plain pass (no TTA):

* **40x**: the original PNG (its file says no pixel size: the model's is assumed);
* **20x rescaled**: the copy as a TIFF whose resolution tags say 0.5 µm/px: enlarged x2 to the
  model's pixel size, its nuclei mapped back onto the copy's pixels (notebook 06's default);
* **20x as it is**: the same copy as a TIFF that says no pixel size: predicted as it is.

Each is scored on its exports' label image (the default segmentation rule). It prints per image
and in total: the nuclei of each, F1 at IoU 0.5 of each 20x prediction against the 40x one, and
of each against the ground truth (the workspace's shards), all on the 40x grid (20x label images
enlarged x2, nearest neighbour), and each run's wall time. ``--figure`` draws a crop of one image
(docs/images/rescale_20x.png). Nothing else is written into the project.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "vrdl_hw3"
WORKSPACE = REPO.parent / "bench" / "runs" / "sched2350-s1"
FIGURE = REPO / "docs" / "images" / "rescale_20x.png"
RUNS = ("40x", "20x rescaled", "20x as it is")
CROP = 300  # px of the 40x image a side in the figure (150 px of the 20x copy)


def val_ids(workspace: Path) -> list[str]:
    with open(workspace / "data" / "manifest.csv") as f:
        return [r["image_id"] for r in csv.DictReader(f) if r["split"] == "val"]


def scratch_workspace(workspace: Path, tmp: Path):
    """A workspace in ``tmp`` that reads the trained one's checkpoints, shards and data (links)
    and writes its own predictions (the stain reference) and exports."""
    from helpers.workspace import get_workspace

    root = tmp / "ws"
    root.mkdir()
    for name in ("checkpoints", "shards", "data"):
        (root / name).symlink_to((workspace / name).resolve())
    return get_workspace(root)


def write_inputs(ids: list[str], data: Path, tmp: Path) -> dict[str, Path]:
    """{run: folder of its images}: the originals, and their 20x copies with and without 0.5 µm/px."""
    import tifffile

    from helpers.pixel_size import tiff_resolution

    folders = {run: tmp / run.replace(" ", "_") for run in RUNS}
    for folder in folders.values():
        folder.mkdir()
    for image_id in ids:
        png = data / "train" / image_id / "images" / f"{image_id}.png"
        shutil.copy(png, folders["40x"] / png.name)
        rgb = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
        half = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
        tifffile.imwrite(folders["20x rescaled"] / f"{image_id}.tif", half, photometric="rgb", **tiff_resolution(0.5))
        tifffile.imwrite(folders["20x as it is"] / f"{image_id}.tif", half, photometric="rgb")
    return folders


def predict(ws, folders: dict[str, Path]) -> tuple[dict, dict]:
    """({run: report}, {run: wall seconds}) of notebook 06 on each folder. Outside the times: the
    stain reference (Macenko, from the training images) is fitted, and TensorFlow started on a
    crop of one image (its first prediction in a process is slower)."""
    from helpers.infer.own_images import predict_own_images
    from helpers.infer.predict import stain_reference

    stain_reference(ws, "macenko")
    warm_up = folders["40x"].parent / "warm_up"
    warm_up.mkdir()
    first = sorted(folders["40x"].iterdir())[0]
    assert cv2.imwrite(str(warm_up / first.name), cv2.imread(str(first))[:256, :256])
    with contextlib.redirect_stdout(io.StringIO()):
        predict_own_images(ws, warm_up, stage="all", run="warm_up", tta=[], progress=False)
    reports, seconds = {}, {}
    for run, folder in folders.items():
        start = time.perf_counter()
        reports[run] = predict_own_images(ws, folder, stage="all", run=folder.name, tta=[], progress=False)
        seconds[run] = time.perf_counter() - start
    return reports, seconds


def label_images(reports: dict, ids: list[str], shape) -> dict[str, dict[str, np.ndarray]]:
    """{run: {image_id: its exports' label image on the 40x grid}}."""
    import tifffile

    out = {}
    for run, report in reports.items():
        out[run] = {}
        for image_id in ids:
            labels = tifffile.imread(report.out_dir / f"{image_id}.labels.tif")
            out[run][image_id] = cv2.resize(labels, shape[::-1], interpolation=cv2.INTER_NEAREST)
    return out


def scores(labels: dict, truth: dict, ids: list[str]) -> list[dict]:
    """One row per image and one for all: nuclei, F1@0.5 against the 40x prediction and the truth."""
    from helpers.infer.instance_metrics import count, matching

    rows = []
    for image_id in ids:
        row = {"image": image_id, "truth": count(truth[image_id])}
        for run in RUNS:
            row[f"{run}: nuclei"] = count(labels[run][image_id])
            row[f"{run}: F1 truth"] = matching(truth[image_id], labels[run][image_id])["F1"]
            if run != "40x":
                row[f"{run}: F1 40x"] = matching(labels["40x"][image_id], labels[run][image_id])["F1"]
        rows.append(row)
    total = {"image": "all (mean F1)"}
    for key in rows[0]:
        if key != "image":
            values = [r[key] for r in rows]
            total[key] = sum(values) if "nuclei" in key or key == "truth" else float(np.mean(values))
    return rows + [total]


def print_table(rows: list[dict]) -> None:
    from helpers.tables import Table

    formats = {k: "{:.3f}" for k in rows[0] if "F1" in k} | {"median area um2": "{:.1f}", "wall s": "{:.0f}"}
    print(Table(rows, formats=formats).text())


def summary(labels: dict, rows: list[dict], seconds: dict) -> list[dict]:
    """One row per run: nuclei, mean F1s, the median nucleus's area (µm², at 0.25 µm per 40x
    pixel) and the run's wall time."""
    total = rows[-1]
    out = []
    for run in RUNS:
        areas = np.concatenate([np.bincount(lab.ravel())[1:] for lab in labels[run].values()])
        out.append({"run": run, "nuclei": total[f"{run}: nuclei"], "F1 truth": total[f"{run}: F1 truth"],
                    "F1 40x": total.get(f"{run}: F1 40x"),
                    "median area um2": float(np.median(areas[areas > 0])) * 0.25 ** 2,
                    "wall s": seconds[run]})
    return out


def figure(path: Path, image_id: str, data: Path, labels: dict, rows: list[dict]) -> None:
    """Three panels of one crop: the 40x prediction, the 20x copy as it is, the 20x copy rescaled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from helpers.drawing import outline

    rgb = cv2.cvtColor(cv2.imread(str(data / "train" / image_id / "images" / f"{image_id}.png")), cv2.COLOR_BGR2RGB)
    half = cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)
    y, x = (rgb.shape[0] - CROP) // 2, (rgb.shape[1] - CROP) // 2
    row = next(r for r in rows if r["image"] == image_id)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4), dpi=100)
    for ax, run in zip(axes, ("40x", "20x as it is", "20x rescaled")):
        own = rgb if run == "40x" else half
        s = 1 if run == "40x" else 2
        crop = own[y // s:(y + CROP) // s, x // s:(x + CROP) // s].copy()
        grid = labels[run][image_id][y:y + CROP:s, x:x + CROP:s]  # back on the image's own pixels
        crop[outline(grid)] = (255, 255, 0)
        ax.imshow(crop, interpolation="nearest")
        vs_40x = "" if run == "40x" else f", F1 {row[f'{run}: F1 40x']:.2f} vs 40x"
        ax.set_title(f"{run}: {row[f'{run}: nuclei']} nuclei\nF1 {row[f'{run}: F1 truth']:.2f} vs truth{vs_40x}",
                     fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{image_id}, a {CROP} px crop at 40x (F1 at IoU 0.5, whole image)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, pil_kwargs={"optimize": True})
    plt.close(fig)
    print(f"figure: {path} ({path.stat().st_size / 1024:.0f} KB)")


def main(argv=None) -> int:
    from helpers.infer.instance_metrics import truth_label_images
    from helpers.infer.predict import shard_ground_truth

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workspace", nargs="?", type=Path, default=WORKSPACE)
    ap.add_argument("--data", type=Path, default=DATA, help="the course dataset (train/<ID>/images/<ID>.png)")
    ap.add_argument("--figure", type=Path, default=FIGURE, help="where to draw the figure ('' for none)")
    args = ap.parse_args(argv)
    ids = val_ids(args.workspace)
    with tempfile.TemporaryDirectory(prefix="nuclei-rescale-20x-") as tmp:
        ws = scratch_workspace(args.workspace, Path(tmp))
        reports, seconds = predict(ws, write_inputs(ids, args.data, Path(tmp)))
        truth = truth_label_images(shard_ground_truth(ws, ids))
        labels = label_images(reports, ids, next(iter(truth.values())).shape)
    rows = scores(labels, truth, ids)
    print(f"\nstage 'all' of {args.workspace}, {len(ids)} validation images, plain pass; F1 at IoU 0.5 on the 40x grid")
    print_table(rows)
    print("\nper run (mean F1 over the images; wall time with the model's load):")
    print_table(summary(labels, rows, seconds))
    if str(args.figure):
        figure(args.figure, ids[0], args.data, labels, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
