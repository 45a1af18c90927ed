"""Model Garden's ``OrbitExperimentRunner`` (the engine of ``train_lib.run_experiment``) for one
stage, extended where Model Garden documents it can be:

* its ``CheckpointManager`` saves in the background
  (:class:`helpers.train.background_save.BackgroundCheckpoint`): a save holds training up only
  while it reads the values;
* it owns the stage's Drive mirror (:class:`helpers.train.mirror.CheckpointMirror`), when Model
  Garden saves on the runtime's own disk and the workspace is elsewhere;
* :meth:`StageRunner.train_until` is ``Controller.train`` with a stop condition (a time budget):
  Orbit runs one loop of ``steps_per_loop`` steps at a time, and the condition is asked before each.

This module imports TensorFlow; :mod:`helpers.train.training` imports it on first use.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import tensorflow as tf
from official.core import train_lib

from helpers.train import mirror
from helpers.train.background_save import BackgroundCheckpoint


class StageRunner(train_lib.OrbitExperimentRunner):
    """``OrbitExperimentRunner(mode="train")`` with a background-saving checkpoint manager, the
    stage's Drive mirror (``workspace_dir``: where the stage's checkpoints must end up) and a
    stop condition (``should_stop``)."""

    def __init__(self, *, workspace_dir: Path | None = None, should_stop: Callable[[], bool] | None = None,
                 **kwargs):
        super().__init__(mode="train", **kwargs)
        local = Path(self.model_dir)
        self.mirror = (mirror.CheckpointMirror(local, workspace_dir, keep=self.params.trainer.max_to_keep,
                                               base=bool(self.params.task.freeze_backbone))
                       if workspace_dir is not None and Path(workspace_dir) != local else None)
        self.should_stop = should_stop or (lambda: False)

    def _maybe_build_checkpoint_manager(self):
        if not self.trainer.checkpoint:
            return None
        return tf.train.CheckpointManager(
            BackgroundCheckpoint.like(self.trainer.checkpoint), directory=self.model_dir,
            max_to_keep=self.params.trainer.max_to_keep, step_counter=self.trainer.global_step,
            checkpoint_interval=self.params.trainer.checkpoint_interval, init_fn=self.trainer.initialize)

    @property
    def step(self) -> int:
        return int(self.trainer.global_step.numpy())

    def train_until(self, target: int) -> bool:
        """Model Garden's loop up to global step ``target``, checkpoints every N steps and at the
        end; True when :attr:`should_stop` ended it first (then the step reached is saved too)."""
        controller = self.controller
        while self.step < target:
            if self.should_stop():
                self.save_if_new()
                return True
            nxt = min(self.step + controller.steps_per_loop, target)
            controller.train(steps=nxt, checkpoint_at_completion=nxt >= target)
        return False

    def save_if_new(self) -> None:
        """A checkpoint of the step reached, unless the newest one already is."""
        latest = self.checkpoint_manager.latest_checkpoint
        if latest is None or int(latest.rsplit("-", 1)[-1]) != self.step:
            self.controller.save_checkpoint()

    def finish_writes(self) -> None:
        """Wait until the checkpoint being written in the background is on disk (its error, if
        the write failed, is raised here)."""
        if self.checkpoint_manager is not None:
            self.checkpoint_manager.sync()
