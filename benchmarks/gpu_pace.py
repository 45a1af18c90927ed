"""Checkpoint costs at a GPU's pace: the ``--gpu-pace`` mode of ``bench_checkpoints.py``.

    python benchmarks/bench_checkpoints.py --gpu-pace 1.0            # ~35 min on 2 cores
    python benchmarks/bench_checkpoints.py --gpu-pace 1.0 --steps 60 --repeats 1   # a quicker look

No GPU with TensorFlow is reachable here, so a GPU's pace is simulated, and every figure below
says how:

1. **Sizes and save blocking, per profile and stage**, measured on the real models (the model
   and optimizer from each profile's config, as ``checkpoint_size`` builds them): the full local
   checkpoint, the synchronous save's seconds, the background save's blocking seconds
   (``helpers.train.background_save``, median of 3), the Drive copy (``helpers.train.drive_copy``:
   float16 weights, no momentum; for ``heads`` the frozen backbone left to the stage's base, after
   the heads' weights were changed as training would) and the base, with each one's copy time at
   the Drive rate.
2. **Paced training**, the demo profile's ``all`` stage, each step held to ``--gpu-pace`` seconds
   (a real demo step, ~0.2 s, then a sleep: the GPU's compute), a: no checkpoints, b: a save every
   5 steps on local disk, copied in the background to a Drive-like folder. The folder keeps what is
   deleted in a Trash, as Drive does (``tests/_fake_drive.py``), and its copies are held to a rate
   scaled so that each demo copy takes as long as the colab ``all`` stage's Drive copy at 4 MB/s
   (rate x demo copy bytes / colab copy bytes): copy seconds, Drive lag and the loss after a kill
   are then the colab profile's, in seconds and in steps at the simulated pace. The save blocking
   in these runs is the demo model's; the colab model's is in table 1, and the colab estimate of
   the ratio adds it (labelled as an estimate).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

PACE_PROFILE, PACE_STAGE = "demo", "all"


# ============================================================================ worker side

def blocking_and_sizes(profile: str, stage: str, tmp: Path, rate_mbps: float) -> dict:
    """Table 1's row for one profile and stage (see the module doc)."""
    import numpy as np
    import tensorflow as tf
    from bench_checkpoints import trainer_items

    from helpers.train import drive_copy, mirror
    from helpers.train.background_save import BackgroundCheckpoint

    cfg, items = trainer_items(profile, stage, tmp)
    model = items["model"]
    folder = tmp / f"{profile}-{stage}"

    def nbytes(prefix):
        return sum(f.stat().st_size for f in mirror.checkpoint_files(Path(prefix)))

    sync = []
    for i in range(2):
        t0 = time.perf_counter()
        tf.train.Checkpoint(**items).write(str(folder / "sync" / f"ckpt-{i}"))
        sync.append(time.perf_counter() - t0)
    ck = BackgroundCheckpoint(**items)
    mgr = tf.train.CheckpointManager(ck, str(folder / "bg"), max_to_keep=2)
    for i in range(4):
        mgr.save(checkpoint_number=i)
        mgr.sync()
    full = Path(mgr.latest_checkpoint)
    base = None
    if cfg.task.freeze_backbone:  # the stage's base, then its trainable weights move on
        base = drive_copy.make_base(full, folder / "drive" / drive_copy.BASE_DIR / full.name)
        for v in model.trainable_variables:
            v.assign_add(tf.random.normal(v.shape, stddev=1e-3, dtype=v.dtype))
        mgr.save(checkpoint_number=9)
        mgr.sync()
        full = Path(mgr.latest_checkpoint)
    small = drive_copy.compact(full, folder / "drive" / full.name, base=base)
    out = {"profile": profile, "stage": stage, "full": nbytes(full), "compact": nbytes(small),
           "base": nbytes(base.prefix) if base else 0, "sync_s": float(np.median(sync)),
           "blocking_s": float(np.median(ck.blocking_seconds[1:])),  # the first includes tracing
           "write_s": float(np.median(ck.write_seconds[1:])), "rate_mbps": rate_mbps}
    return out


# ============================================================================ parent side

def print_table(rows: list[dict]) -> None:
    rate = rows[0]["rate_mbps"] if rows else 4.0
    print(f"\n1. sizes and save blocking, measured on this machine's CPU (copy seconds at {rate} MB/s)")
    print(f"  {'profile':8s}{'stage':7s}{'local ckpt MB':>14s}{'sync save s':>12s}{'blocking s':>11s}"
          f"{'(write s)':>10s}{'Drive copy MB':>14s}{'copy s':>8s}{'base MB':>9s}{'base s':>8s}")
    for r in rows:
        print(f"  {r['profile']:8s}{r['stage']:7s}{r['full'] / 1e6:14.1f}{r['sync_s']:12.2f}{r['blocking_s']:11.3f}"
              f"{r['write_s']:10.2f}{r['compact'] / 1e6:14.1f}{r['compact'] / 1e6 / rate:8.1f}"
              f"{r['base'] / 1e6:9.1f}{r['base'] / 1e6 / rate:8.1f}", flush=True)


def paced_summary(results: dict, rows: list[dict], pace: float, every: int, rate: float, sim_rate: float) -> dict:
    """Table 2: the paced runs, and the colab `all` estimate built from them and table 1."""
    by = {(r["profile"], r["stage"]): r for r in rows}
    demo, colab = by.get((PACE_PROFILE, PACE_STAGE)), by.get(("colab", "all"))
    a = [r["s_per_step"] for r in results.get("a", [])]
    b = [r["s_per_step"] for r in results.get("b", [])]
    ratios = [x / y for x, y in zip(b, a)]
    copies = [c for r in results.get("b", []) for c in r["copies"] if c["step"] > 0]
    lost = [nxt["ended_at"] - prev["step"] for r in results.get("b", [])
            for prev, nxt in zip(r["copies"], r["copies"][1:])]
    lags = [c["ended_at"] - c["step"] for c in copies]
    saves = [s["seconds"] for r in results.get("b", []) for s in r["saves"] if s["step"] > 0]
    hours = sum(r["wall"] for r in results.get("b", [])) / 3600
    sent = sum(c["bytes"] for r in results.get("b", []) for c in r["copies"])
    scale = (colab["compact"] / demo["compact"]) if (demo and colab) else 1.0
    out = {
        "pace_s": pace, "ratio_b_a": statistics.median(ratios) if ratios else None, "ratios": ratios,
        "copy_s": statistics.median(c["seconds"] for c in copies) if copies else None,
        "copy_mb_demo": statistics.median(c["bytes"] for c in copies) / 1e6 if copies else None,
        "lag_steps": max(lags) if lags else None, "worst_loss_steps": max(lost) if lost else None,
        "save_blocking_s": statistics.median(saves) if saves else None,
        "drive_gb_per_h_demo": sent / 1e9 / hours if hours else None,
        "drive_gb_per_h_colab": sent * scale / 1e9 / hours if hours else None,
        "live_mb_demo": [r.get("drive_live", 0) / 1e6 for r in results.get("b", [])],
        "trash_mb_demo": [r.get("drive_trash", 0) / 1e6 for r in results.get("b", [])],
    }
    if colab:
        out["colab_ratio_estimate"] = 1 + colab["blocking_s"] / (every * pace)
        out["colab_copy_mb"] = colab["compact"] / 1e6
    print(f"\n2. paced runs: demo `all`, {pace:.1f} s/step, a save every {every} steps, Drive copies at "
          f"{sim_rate:.3f} MB/s (= {rate} MB/s x demo/colab copy size: each copy lasts as long as a colab "
          f"`all` copy at {rate} MB/s)")
    print(f"  step time b/a (b: saves + background copies): {out['ratio_b_a']:.3f} (target <= 1.10); per repeat "
          + ", ".join(f"{x:.3f}" for x in ratios))
    print(f"  save blocking in b (demo model): median {out['save_blocking_s']:.3f} s")
    if colab:
        print(f"  colab `all` ESTIMATE: 1 + its blocking {colab['blocking_s']:.3f} s / ({every} x {pace:.1f} s) = "
              f"{out['colab_ratio_estimate']:.3f} (blocking measured here on the CPU; a GPU reads its weights "
              f"to host memory instead, not measured)")
    print(f"  copies: {len(copies)}, median {out['copy_s']:.1f} s each (demo {out['copy_mb_demo']:.2f} MB; colab "
          f"{out.get('colab_copy_mb', float('nan')):.0f} MB at {rate} MB/s)")
    print(f"  Drive behind when a copy ends: up to {out['lag_steps']} steps; worst loss after a kill (just before "
          f"a copy ends): {out['worst_loss_steps']} steps = {out['worst_loss_steps'] * pace / 60:.1f} min at "
          f"{pace:.1f} s/step")
    print(f"  written to Drive: {out['drive_gb_per_h_demo']:.2f} GB/h here; colab `all` equivalent "
          f"{out['drive_gb_per_h_colab']:.1f} GB/h (the same copies at colab's copy size)")
    print("  Drive at the end of each b run (live, Trash): " + ", ".join(
        f"{lv:.1f} MB, {tr:.3f} MB" for lv, tr in zip(out["live_mb_demo"], out["trash_mb_demo"])), flush=True)
    return out
