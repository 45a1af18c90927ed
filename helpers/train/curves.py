"""Loss curves of a stage, from the TensorBoard event files Model Garden/Orbit write.

Every run (first start and each resume) adds an event file under
``ws.checkpoints/<stage>/train/``. :func:`read_curves` merges them by global
step; where a killed run logged steps past its last checkpoint and the resumed
run logged them again, the newer value wins. :func:`plot_curves` draws them
with matplotlib and marks where each run started.
"""
from __future__ import annotations

from pathlib import Path

from helpers.train.stages import events_dir

# The losses Model Garden's Mask R-CNN task reports each step (the training progress bar shows them too).
LOSS_KEYS = ("total_loss", "rpn_score_loss", "rpn_box_loss", "frcnn_cls_loss",
             "frcnn_box_loss", "mask_loss")


def event_files(workspace, stage: str) -> list[Path]:
    return sorted(events_dir(workspace, stage).glob("events.out.tfevents.*"))


def _read_file(path: Path):
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    rows = []
    try:
        for rec in tf.data.TFRecordDataset(str(path)):
            ev = event_pb2.Event.FromString(rec.numpy())
            for v in ev.summary.value:
                if v.HasField("tensor"):
                    val = tf.make_ndarray(v.tensor)
                elif v.HasField("simple_value"):
                    val = v.simple_value
                else:
                    continue
                try:
                    rows.append((int(ev.step), float(val), float(ev.wall_time), v.tag))
                except (TypeError, ValueError):
                    continue
    except tf.errors.DataLossError:
        pass  # a run killed mid-write leaves a truncated last record: keep what was read
    return rows


def read_curves(workspace, stage: str) -> dict:
    """``{"<tag>": (steps, values), ..., "_run_starts": [step, ...]}``, steps ascending."""
    best: dict[str, dict[int, tuple[float, float]]] = {}
    starts = []
    for f in event_files(workspace, stage):
        rows = _read_file(f)
        if rows:
            starts.append(min(r[0] for r in rows))
        for step, val, wall, tag in rows:
            cur = best.setdefault(tag, {}).get(step)
            if cur is None or wall >= cur[1]:
                best[tag][step] = (val, wall)
    out = {tag: (sorted(d), [d[s][0] for s in sorted(d)]) for tag, d in best.items()}
    out["_run_starts"] = sorted(starts)
    return out


def plot_curves(workspace, stage: str, keys=LOSS_KEYS, ax=None, show_lr: bool = True):
    """Plot a stage's loss curves (log scale) and learning rate; returns the Figure."""
    import matplotlib.pyplot as plt

    curves = read_curves(workspace, stage)
    if not any(k in curves for k in keys):
        raise FileNotFoundError(f"no training summaries for stage {stage!r} yet "
                                f"(looked in {event_files.__name__}: train/events.out.tfevents.*)")
    if ax is None:
        ncols = 2 if show_lr and "learning_rate" in curves else 1
        fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4), squeeze=False)
        ax, lr_ax = axes[0][0], (axes[0][1] if ncols == 2 else None)
    else:
        fig, lr_ax = ax.figure, None
    for k in keys:
        if k in curves:
            steps, vals = curves[k]
            ax.plot(steps, vals, label=k, lw=2 if k == "total_loss" else 1)
    for s in curves["_run_starts"][1:]:
        ax.axvline(s, color="grey", ls=":", lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("global step")
    ax.set_ylabel("loss")
    ax.set_title(f"stage {stage}: losses ({len(curves['_run_starts'])} run(s); dotted = resume)")
    ax.legend(fontsize=8)
    if lr_ax is not None:
        steps, vals = curves["learning_rate"]
        lr_ax.plot(steps, vals, color="black")
        lr_ax.set_xlabel("global step")
        lr_ax.set_title("learning rate")
    fig.tight_layout()
    return fig
