"""A run's progress line, time budget and divergence check (no training here)."""
from __future__ import annotations

import time

import pytest

from helpers.train import train_progress
from helpers.train.train_progress import StageProgress, TrainingDiverged


def test_durations_read_as_hours_minutes_or_seconds():
    assert [train_progress.duration(s) for s in (-3, 40, 720, 3900)] == ["0s", "40s", "12m", "1h05m"]


def test_a_nan_loss_stops_the_run_at_once():
    bar = StageProgress("heads", 0, 10, enabled=False)
    bar({"total_loss": 1.0, "mask_loss": 0.5, "learning_rate": 0.01})
    with pytest.raises(TrainingDiverged, match=r"total_loss = nan at step .*lower learning_rate"):
        bar({"total_loss": float("nan"), "mask_loss": 0.5, "learning_rate": 0.01})


def test_s_per_step_leaves_out_the_first_step_and_the_budget_uses_it():
    bar = StageProgress("heads", 0, 10, enabled=False, budget_s=3600)
    bar({"total_loss": 1.0})
    assert bar.s_per_step is None and not bar.over_budget()
    bar({"total_loss": 1.0})
    assert bar.s_per_step is not None
    bar.budget_s, bar.t0 = 1.0, time.perf_counter() - 2.0
    assert bar.over_budget()
    bar.close()


def test_the_line_shows_one_time_left(capsys):
    from helpers import progress

    progress.use_text_bars(True)
    try:
        bar = StageProgress("heads", 0, 10, enabled=True)
        for _ in range(3):
            bar({"total_loss": 1.0, "mask_loss": 0.5, "learning_rate": 0.01})
        bar.bar.refresh()
        bar.close()
    finally:
        progress.use_text_bars(None)
    line = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert line.startswith("train heads:") and "3/10 [" in line and "left=" in line
    assert "<" not in line and "step/s" not in line and "s/step]" not in line  # not tqdm's own ETA and rate
