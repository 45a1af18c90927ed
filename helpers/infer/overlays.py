"""Matplotlib figures for evaluation and submission.

* ``eval_overlay``: one validation image with true positives (green), false
  positives (red) and missed nuclei (blue) at IoU 0.5, from ``evaluate``'s matches.
* ``prediction_overlay``: one (test) image with its predicted masks above a score floor,
  coloured by score with a colour bar, and the counts in the title.
* ``score_histogram``: the score distribution per image.

Functions return a ``matplotlib.figure.Figure`` built without pyplot (no global
state, nothing left open); in a notebook show it with ``display(fig)`` or as the
cell's last expression, and save it with ``fig.savefig(path)``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from helpers.detections import Detections
from helpers.rle import decode_crop, rle_bbox
from helpers.drawing import outline

COLORS = {"tp": (0.1, 0.85, 0.1), "fp": (0.95, 0.1, 0.1), "missed": (0.15, 0.45, 1.0)}
# predictions coloured by score from cyan (low) through green to yellow (high): bright hues far from
# haematoxylin's purple and eosin's pink, so even the lowest score stands out (viridis' dark purple
# vanished on nuclei)
SCORE_CMAP = LinearSegmentedColormap.from_list("nuclei_score", ["#00e5ff", "#39ff14", "#ffff00"])
OVERLAY_MIN_SCORE = 0.3  # the overlays draw predictions scoring at least this (a parameter of each notebook)


def figure_png(fig: Figure, dpi: int | None = None) -> bytes:
    """PNG bytes of a figure (Agg canvas; no pyplot, no global state)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if fig.canvas is None or not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _register_notebook_display() -> None:
    """Inside IPython/Jupyter (also headless papermill runs), show a returned Figure as a
    PNG even when no ``%matplotlib inline`` backend is active."""
    try:
        from IPython import get_ipython

        ip = get_ipython()
        if ip is not None:
            ip.display_formatter.formatters["image/png"].for_type(Figure, figure_png)
    except Exception:  # noqa: BLE001 - display glue only; never break an import
        pass


_register_notebook_display()


def _paint(canvas: np.ndarray, rles: Sequence[dict], colors, fill_alpha: float = 0.3) -> None:
    """Fill each mask with its colour (alpha blend) and draw its 1-px outline opaque."""
    h, w = canvas.shape[:2]
    if not len(rles):
        return
    boxes = rle_bbox(rles)
    colors = np.broadcast_to(np.asarray(colors, np.float64).reshape(-1, 3), (len(rles), 3))
    for rle, box, color in zip(rles, boxes, colors):
        x, y, bw, bh = (int(v) for v in box)
        if bw == 0 or bh == 0:
            continue
        y0, x0, y1, x1 = max(0, y - 1), max(0, x - 1), min(h, y + bh + 1), min(w, x + bw + 1)
        m = decode_crop(rle, (y0, x0, y1, x1))
        edge = outline(m)
        inner = m & ~edge
        region = canvas[y0:y1, x0:x1]
        region[inner] = (1 - fill_alpha) * region[inner] + fill_alpha * color
        region[edge] = color


def _as_float_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3].astype(np.float64)
    return img / 255.0 if img.max() > 1.0 else img


def _figure(image_shape, scale: float = 8.0) -> tuple[Figure, object]:
    """Width ``scale`` inches at 125 dpi (a 1000-px image is shown ~1:1), 0.5 in for the title."""
    h, w = image_shape[:2]
    img_h = scale * h / w
    fig = Figure(figsize=(scale, img_h + 0.5), dpi=125)
    ax = fig.add_axes([0, 0, 1, img_h / (img_h + 0.5)])
    ax.set_axis_off()
    return fig, ax


def eval_overlay_array(image: np.ndarray, gt_rles: Sequence[dict], dets: Detections, match) -> np.ndarray:
    """The overlay of ``eval_overlay`` as a float RGB array in [0, 1] (H, W, 3)."""
    if len(match.tp) != len(dets) or len(match.gt_matched) != len(gt_rles):
        raise ValueError(f"match is for {len(match.tp)} predictions / {len(match.gt_matched)} GT, got "
                         f"{len(dets)} / {len(gt_rles)}; pass the same predictions and GT as to evaluate()")
    canvas = _as_float_rgb(image).copy()
    if tuple(canvas.shape[:2]) != tuple(dets.size):
        raise ValueError(f"image is {canvas.shape[:2]} but predictions are for {dets.size}")
    _paint(canvas, [r for r, ok in zip(gt_rles, match.gt_matched) if not ok], COLORS["missed"])
    _paint(canvas, [dets.rles[i] for i in np.flatnonzero(match.fp)], COLORS["fp"])
    _paint(canvas, [dets.rles[i] for i in np.flatnonzero(match.tp)], COLORS["tp"])
    return np.clip(canvas, 0, 1)


def eval_overlay(image: np.ndarray, gt_rles: Sequence[dict], dets: Detections, match,
                 title: str | None = None) -> Figure:
    """TP (green) / FP (red) predictions and missed GT (blue) at IoU 0.5.

    ``match`` is ``EvalResult.matches[image_id]``; predictions that COCO did not
    evaluate (beyond the maxDets cap) are not drawn.
    """
    canvas = eval_overlay_array(image, gt_rles, dets, match)
    fig, ax = _figure(canvas.shape)
    ax.imshow(canvas, interpolation="nearest")
    n_tp, n_fp, n_missed = int(match.tp.sum()), int(match.fp.sum()), int((~match.gt_matched).sum())
    counts = f"TP {n_tp}  FP {n_fp}  missed {n_missed}  (IoU 0.5)"
    fig.suptitle(f"{title}\n{counts}" if title else counts, fontsize=9, y=0.995, va="top")
    ax.legend(handles=[Patch(color=COLORS[k], label=k) for k in ("tp", "fp", "missed")],
              loc="lower right", fontsize=7, framealpha=0.7)
    return fig


def prediction_overlay_array(image: np.ndarray, dets: Detections, min_score: float = 0.0) -> np.ndarray:
    """The overlay of ``prediction_overlay`` as a float RGB array in [0, 1] (H, W, 3): the masks
    scoring at least ``min_score``, coloured by score (:data:`SCORE_CMAP`), the best drawn last."""
    canvas = _as_float_rgb(image).copy()
    if tuple(canvas.shape[:2]) != tuple(dets.size):
        raise ValueError(f"image is {canvas.shape[:2]} but predictions are for {dets.size}")
    shown = dets.subset(np.flatnonzero(dets.scores >= min_score)) if len(dets) else dets
    d = shown.sorted().subset(np.arange(len(shown))[::-1]) if len(shown) else shown  # best drawn last
    norm = _score_norm(min_score)
    _paint(canvas, d.rles, [SCORE_CMAP(norm(float(s)))[:3] for s in d.scores])
    return np.clip(canvas, 0, 1)


def _score_norm(min_score: float):
    from matplotlib.colors import Normalize

    return Normalize(vmin=min(min_score, 0.99), vmax=1.0, clip=True)


def prediction_overlay(image: np.ndarray, dets: Detections, title: str | None = None,
                       min_score: float = OVERLAY_MIN_SCORE) -> Figure:
    """Predicted masks scoring at least ``min_score``, coloured by score with a colour bar; the
    title counts all detections and those drawn."""
    from matplotlib.cm import ScalarMappable

    canvas = prediction_overlay_array(image, dets, min_score)
    fig, ax = _figure(canvas.shape)
    ax.imshow(canvas, interpolation="nearest")
    n_shown = int((dets.scores >= min_score).sum())
    counts = f"{len(dets)} detections, {n_shown} drawn (score >= {min_score:g})"
    fig.suptitle(f"{title}\n{counts}" if title else counts, fontsize=9, y=0.995, va="top")
    ax.add_patch(Rectangle((0.64, 0.0), 0.36, 0.085, transform=ax.transAxes, facecolor="white", alpha=0.85))
    cax = ax.inset_axes([0.66, 0.05, 0.32, 0.022])
    bar = fig.colorbar(ScalarMappable(norm=_score_norm(min_score), cmap=SCORE_CMAP), cax=cax, orientation="horizontal")
    bar.set_label("score", fontsize=7, labelpad=1)
    bar.ax.tick_params(labelsize=6, pad=1)
    return fig


def score_histogram(predictions: Detections | Mapping[str, Detections], bins: int = 20,
                    title: str | None = None) -> Figure:
    """Histogram of scores in [0, 1]: one step curve per image (or one bar chart for one)."""
    preds = {"": predictions} if isinstance(predictions, Detections) else dict(predictions)
    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    edges = np.linspace(0, 1, bins + 1)
    for name, d in preds.items():
        label = f"{name} (n={len(d)})" if name else f"n={len(d)}"
        if len(preds) == 1:
            ax.hist(d.scores, bins=edges, color="tab:blue", alpha=0.8, label=label)
        else:
            ax.hist(d.scores, bins=edges, histtype="step", linewidth=1.5, label=label)
    ax.set_xlim(0, 1)
    ax.set_xlabel("score")
    ax.set_ylabel("detections")
    ax.set_title(title or "score histogram", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def eval_overlays(images: Mapping[str, np.ndarray], predictions: Mapping[str, Detections],
                  ground_truth: Mapping[str, Sequence[dict]], result) -> dict[str, Figure]:
    """``eval_overlay`` for every image of ``result`` (an EvalResult) that is in ``images``;
    title = image id and its AP from the per-image table."""
    rows = {r["image_id"]: r for r in result.per_image}
    out = {}
    for image_id, match in result.matches.items():
        if image_id not in images:
            continue
        row = rows.get(image_id, {})
        aps = "  ".join(f"{k}={v:.3f}" for k, v in row.items() if k.startswith("AP"))
        dets = predictions.get(image_id) or Detections.empty(np.asarray(images[image_id]).shape[:2])
        gt = ground_truth[image_id]
        gt_rles = list(gt.rles) if isinstance(gt, Detections) else list(gt)
        out[image_id] = eval_overlay(images[image_id], gt_rles, dets, match, title=f"{image_id}  {aps}")
    return out
