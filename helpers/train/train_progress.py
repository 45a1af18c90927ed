"""What a run of a stage shows and watches as it trains.

:class:`StageProgress` is the Orbit train action of a run: its progress line (step/total, losses,
s/step, time left, the newest step safe on Drive), the time budget (the runner's stop condition,
:meth:`StageProgress.over_budget`) and the divergence check (:class:`TrainingDiverged` at the
first NaN or infinite loss). :func:`announce` says where a run starts and where it saves.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from helpers.train.curves import LOSS_KEYS
from helpers.train.stages import Stage
from helpers.errors import UserError


class TrainingDiverged(UserError, RuntimeError):
    """The loss became NaN or infinite: training stops at once instead of going on for hours."""


def duration(seconds: float) -> str:
    """``1h05m``, ``12m`` or ``40s``."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m" if seconds >= 60 else f"{seconds}s"


# tqdm's line without its own rate and time left: they count the first step's tracing of the
# tf.function, so "left" after the bar (s/step of the steps since) is the one time left shown
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


class StageProgress:
    """Orbit train action: a tqdm line with step/total, losses and s/step; and the time
    budget, as the runner's stop condition (:meth:`over_budget`)."""

    def __init__(self, stage, start, total, enabled=True, t0=None, budget_s=None, mirror=None, lock=None):
        from helpers.progress import tqdm

        self.bar = tqdm(total=total, initial=start, desc=f"train {stage}", unit="step",
                        disable=not enabled, dynamic_ncols=True, file=sys.stderr, bar_format=BAR_FORMAT)
        self.stage = stage
        self.times: list[float] = []
        self.last = time.perf_counter()
        self.last_output: dict = {}
        self.t0 = t0 if t0 is not None else time.perf_counter()
        self.budget_s = budget_s
        self.mirror = mirror  # a CheckpointMirror: its newest step is shown, its copy time budgeted
        self.lock = lock  # the StageLock this run holds: refreshed as it trains

    def __call__(self, output):
        if self.lock is not None:
            self.lock.refresh()
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now
        vals = {k: float(output[k]) for k in LOSS_KEYS if k in output}
        if "learning_rate" in output:
            vals["learning_rate"] = float(output["learning_rate"])
        self.last_output = vals
        self._check_finite(vals)
        self.bar.set_postfix(self._postfix(vals), refresh=False)
        self.bar.update(1)

    def _postfix(self, vals: dict) -> dict:
        """The progress line's fields after the bar: losses, learning rate, s/step, time left."""
        sps = self.s_per_step or self.times[-1]
        post = {"loss": f"{vals.get('total_loss', float('nan')):.3f}",
                "mask": f"{vals.get('mask_loss', float('nan')):.3f}",
                "lr": f"{vals.get('learning_rate', 0):.2e}",
                "s/step": f"{sps:.2f}",
                "left": duration(sps * (self.bar.total - self.bar.n - 1))}
        if self.mirror is not None:
            post["safe on Drive"] = self.mirror.mirrored_step if self.mirror.mirrored_step is not None else "-"
        return post

    def over_budget(self) -> bool:
        """Whether the next step would overrun the time budget (with the last copy to Drive,
        which runs after the stop)."""
        if self.budget_s is None:
            return False
        est = self.s_per_step or 0.0  # the first step's time is mostly tracing: no estimate yet
        copy = self.mirror.last_copy_seconds if self.mirror is not None else 0.0
        return time.perf_counter() - self.t0 + 1.5 * est + copy > self.budget_s

    def _check_finite(self, vals: dict) -> None:
        bad = {k: v for k, v in vals.items() if k != "learning_rate" and not math.isfinite(v)}
        if bad:
            step = self.bar.n + 1
            self.bar.close()
            raise TrainingDiverged(
                f"stage {self.stage!r}: {', '.join(f'{k} = {v}' for k, v in bad.items())} at step {step} "
                f"(learning rate {vals.get('learning_rate', float('nan')):.2e}): training diverged and was "
                f"stopped, with no checkpoint of this step. A checkpoint saved just before it may hold "
                f"the diverged weights too. Start the stage again with a lower learning_rate (move its "
                f"checkpoints folder away first: a new rate is a new config).")

    def mark(self):
        self.last = time.perf_counter()

    @property
    def s_per_step(self):
        t = self.times[1:]  # the first step includes tracing the tf.function
        return sum(t) / len(t) if t else None

    def close(self):
        self.bar.close()


def announce(st: Stage, latest, where: str, start: int, planned: int, model_dir: Path, mirrored: bool) -> None:
    """Say how many steps are planned and left, where the run starts and where it saves
    (``mirrored``: on local disk, copied to the workspace in the background)."""
    stage, sdir = st.name, st.folder
    if latest:
        source = f" (copied from {sdir})" if where == "drive" and model_dir != sdir else ""
        print(f"resuming stage {stage!r} from {latest[1].name}{source}: step {start} of {planned} planned, "
              f"{planned - start} left (the progress line shows the time left)")
    else:
        print(f"stage {stage!r}: {planned} steps planned (the progress line shows the time left)")
    if mirrored:
        print(f"checkpoints: saved on this runtime's disk ({model_dir}), copied to {sdir} in the background "
              "with only what a resume needs (float16 weights, no momentum: a quarter of the bytes); "
              "'safe on Drive' in the progress line is the newest step whose copy there is complete")
