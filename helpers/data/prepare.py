"""The steps of notebook 01: get the data, check it, look at it, split it, shard it.

Each function is one notebook cell; the work itself lives in the data modules
(acquire, demo_data, manifest, dataset, shards).
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from helpers.data import manifest as mf
from helpers.data.acquire import acquire_dataset
from helpers.data.dataset import DatasetError, open_dataset, read_image, read_masks
from helpers.data.demo_data import make_demo_dataset
from helpers.data.imported import ImportOptions, read_record
from helpers.data.organs import ORGANS, UNKNOWN
from helpers.drawing import outline
from helpers.workspace import Workspace

DEMO_FOLDER = "demo"
REAL_FOLDER = "vrdl_hw3"


def get_dataset(ws: Workspace, source: str = "", profile: str = "demo", manifest_path: str = "",
                seed: int = 0, layout: str = "auto", classes: Sequence[str] = (),
                pixel_size_um: float | None = None) -> tuple[Path, Path]:
    """Put the dataset under ``ws.data`` and return ``(dataset_root, manifest_path)``.

    ``source`` empty on the demo profile: generate the demo dataset (it carries its
    own manifest). Otherwise ``source`` is a folder, a zip, or a Google Drive file
    id/URL. The course layout is checked against ``manifest_path`` (default: the committed
    data_manifest.csv); another ``layout`` ("auto": detected) is imported, with a manifest of its
    own: ``classes`` are its categories or classes that are nuclei (empty: all), ``pixel_size_um``
    the µm per pixel of images whose files do not say.
    """
    if not source:
        if profile != "demo":
            raise DatasetError("data_source is empty: set it to the dataset folder, its .zip, or the "
                               "Google Drive file id of the zip (or use profile='demo' for generated data)")
        root = make_demo_dataset(ws.data / DEMO_FOLDER, seed=seed)
        return root, Path(manifest_path or root / mf.MANIFEST_NAME)
    manifest_path = Path(manifest_path or mf.REPO_MANIFEST)
    options = ImportOptions("" if layout == "auto" else layout, pixel_size_um, tuple(classes))
    root = acquire_dataset(source, ws.data / REAL_FOLDER, manifest=manifest_path, options=options)
    return root, (root / mf.MANIFEST_NAME if read_record(root) else manifest_path)


def check_dataset(root: str | os.PathLike, manifest_path: str | os.PathLike) -> list[dict]:
    """Validate the dataset against its manifest and print a summary; return the rows."""
    rows = mf.read_manifest(manifest_path)
    summary = mf.validate_against_manifest(root, rows, progress=False)
    print(f"{root} matches {manifest_path}")
    print(f"  images per split: {summary['images']}")
    print(f"  nuclei per split: {summary['nuclei']}")
    return rows


def nuclei_per_organ(rows: Sequence[dict]) -> dict[str, dict[str, int]]:
    """{organ: {split: nuclei}} for the labeled images (test images have no masks)."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        if r["split"] != "test":
            out[r["organ"]][r["split"]] += r["n_nuclei"]
    return {o: dict(s) for o, s in sorted(out.items())}


def organ_figure(rows: Sequence[dict]):
    """Bar chart: nuclei per organ, stacked by split, with image counts in the labels."""
    from matplotlib.figure import Figure

    per = nuclei_per_organ(rows)
    n_img = defaultdict(int)
    for r in rows:
        if r["split"] != "test":
            n_img[r["organ"]] += 1
    organs = list(per)
    fig = Figure(figsize=(max(4, 1.1 * len(organs)), 3.2))
    ax = fig.add_subplot()
    bottom = np.zeros(len(organs))
    for split, color in (("train", "#7b4fa0"), ("val", "#e89bb8")):
        vals = np.array([per[o].get(split, 0) for o in organs])
        ax.bar([f"{o}\n({n_img[o]} img)" for o in organs], vals, bottom=bottom, color=color, label=split)
        bottom += vals
    ax.set_ylabel("nuclei")
    known = set(ORGANS) | {UNKNOWN}
    ax.set_title("Nuclei per organ" if set(organs) <= known else "Nuclei per group (the split is stratified by it)")
    ax.legend()
    fig.tight_layout()
    return fig


def samples_figure(root: str | os.PathLike, image_ids: Sequence[str] | None = None, n: int = 3):
    """A few training images beside the same image with every nucleus outlined in its own colour."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    ds = open_dataset(root)
    items = {it.image_id: it for it in ds.train}
    ids = list(image_ids) if image_ids else [ds.train[i].image_id
                                             for i in np.linspace(0, len(ds.train) - 1, min(n, len(ds.train))).astype(int)]
    fig = Figure(figsize=(7, 3.4 * len(ids)))
    cmap = colormaps["tab20"]
    for row, image_id in enumerate(ids):
        it = items[image_id]
        image = read_image(it.image_path)
        masks = read_masks(it)
        labels = np.zeros(image.shape[:2], np.int32)
        for k, m in enumerate(masks, start=1):
            labels[m] = k
        over = image.astype(np.float32) / 255
        inside = labels > 0
        colors = np.array([cmap(k % 20)[:3] for k in range(20)], np.float32)
        over[inside] = 0.55 * over[inside] + 0.45 * colors[labels[inside] % 20]
        over[outline(labels)] = (1.0, 1.0, 0.2)  # bright outlines: touching nuclei stay separate
        for col, (img, title) in enumerate(((image, image_id), (over, f"{len(masks)} nuclei"))):
            ax = fig.add_subplot(len(ids), 2, 2 * row + col + 1)
            ax.imshow(img, interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return fig


def choose_split(ws: Workspace, rows: Sequence[dict], n_val: int | None = None,
                 val_ids: Sequence[str] | None = None, seed: int = 0) -> list[dict]:
    """Set the validation split (hand-picked ``val_ids``, else stratified by organ).

    The rows with the chosen split are saved as ``data/manifest.csv`` in the
    workspace; the shard index records the same split for the later notebooks.
    An empty ``val_ids`` with ``n_val=0`` trains on train+val (the final model).
    """
    if val_ids:
        chosen = list(val_ids)
    elif n_val == 0:
        chosen = []
    else:
        chosen = mf.choose_val_split(rows, n_val, seed)
    rows = mf.set_val_split(rows, chosen)
    mf.write_manifest(rows, ws.data / mf.WORKSPACE_MANIFEST)
    for r in rows:
        if r["split"] == "val":
            print(f"  val: {r['image_id']} ({r['organ']}, {r['n_nuclei']} nuclei)")
    s = mf.summarize(rows)
    print(f"split: {s['images']} images; saved to {ws.data / mf.WORKSPACE_MANIFEST}")
    return rows


def shard_table(index: dict):
    """The shards per split and organ: count, nuclei, MB (a table; a DataFrame in a notebook)."""
    from helpers.tables import Report, Table

    per = defaultdict(lambda: [0, 0, 0])
    for e in index["shards"]:
        k = (e["split"], e["organ"])
        per[k][0] += 1
        per[k][1] += e["n_nuclei"]
        per[k][2] += e["size"]
    rows = [{"split": split, "organ": organ, "shards": n, "nuclei": nuc, "MB": size / 1e6}
            for (split, organ), (n, nuc, size) in sorted(per.items())]
    return Report([Table(rows, formats={"MB": "{:.2f}"}), f"{index['n_shards']} shards, {index['n_nuclei']} nuclei"])
