"""Checkpoint saves that hold training up only while the values are read.

A synchronous save of the colab profile's ``all`` stage (372 MB) takes 1.6 s on this machine;
at a GPU's ~1 s per step and a save every 5 steps that is a quarter of the wall time. So
:class:`BackgroundCheckpoint` splits a save in two: the training thread reads every value the
checkpoint holds (a consistent snapshot between two steps), and a writer thread writes the
files from those values while training goes on.

A value read from a variable is an immutable tensor: TensorFlow's update ops copy a variable's
buffer before changing it in place while a tensor read from it is still alive (copy-on-write;
checked for SGD with momentum and ``assign_add``, eagerly and in a ``tf.function``, by
``tests/train/test_background_save.py``). So the snapshot costs no copy of its own between two steps;
the next step pays one buffer copy per variable it updates, on its own device.

TensorFlow's own ``experimental_enable_async_checkpoint`` copies into CPU variables instead;
with Orbit's async checkpointing an earlier run here found a resumed run's optimizer iteration
count one ahead of its global step (a checkpoint mixing two steps), so it is not used.

What a file reader sees is unchanged: the same keys and object graph as a synchronous
``tf.train.Checkpoint.write`` (TensorFlow's own ``_gather_serialized_tensors`` lists them),
written under a temp folder ``ckpt-N_temp.*`` (which :func:`helpers.train.checkpoints.remove_save_leftovers`
removes after a kill), data files moved in first and the index last. Only then do the
``CheckpointManager``'s callbacks record it in the state file and delete the oldest, so
:mod:`helpers.train.mirror` and a resume never see a checkpoint before it is whole.

One write is in flight at a time: a save that comes while the previous one is still being
written waits for it. ``sync()`` waits for the write in flight (``CheckpointManager.sync``,
which the stage runner calls before it reports). A checkpoint this module cannot snapshot (a
partitioned variable, a registered saver) is saved the ordinary, synchronous way.
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import tensorflow as tf


class _CannotSnapshot(Exception):
    """The checkpoint holds something this module does not copy: save synchronously."""


class BackgroundCheckpoint(tf.train.Checkpoint):
    """A ``tf.train.Checkpoint`` whose ``write`` (and so ``CheckpointManager.save``) blocks only
    while it reads the values; the files are written by a background thread."""

    def __init__(self, **items):
        super().__init__(**items)
        self._writer: threading.Thread | None = None
        self._write_error: BaseException | None = None
        self.blocking_seconds: list[float] = []   # per save: the time the caller was held up
        self.write_seconds: list[float] = []      # per save: the background write

    @classmethod
    def like(cls, checkpoint: tf.train.Checkpoint) -> "BackgroundCheckpoint":
        """One that saves the same items as ``checkpoint`` (Model Garden's trainer's)."""
        return cls(**checkpoint._kwargs)  # noqa: SLF001 - the items it was made with

    # -------------------------------------------------------------------------------- writing
    def _write(self, file_prefix, options=None):
        t0 = time.perf_counter()
        self.sync()  # one write in flight at a time
        try:
            values = self._snapshot()
        except _CannotSnapshot:
            out = super()._write(file_prefix, options=options)
            self.blocking_seconds.append(time.perf_counter() - t0)
            return out
        callbacks = list(getattr(options, "experimental_write_callbacks", None) or [])
        self._writer = threading.Thread(target=self._write_files, args=(str(file_prefix), values, callbacks),
                                        name="checkpoint-writer", daemon=True)
        self._writer.start()
        self.blocking_seconds.append(time.perf_counter() - t0)
        return str(file_prefix)

    def _snapshot(self) -> dict[str, tf.Tensor]:
        """``{checkpoint key: value}`` of everything a save of this checkpoint writes, read now."""
        if not tf.executing_eagerly():
            raise _CannotSnapshot("graph mode")
        try:  # TensorFlow's own list of what a save writes (2.11 and later)
            tensors, _, registered, _ = self._saver._gather_serialized_tensors(None)  # noqa: SLF001
        except (AttributeError, TypeError, ValueError) as e:  # another TensorFlow: save as it does
            raise _CannotSnapshot(f"{type(e).__name__}: {e}") from e
        if registered:
            raise _CannotSnapshot("registered savers")
        values = {}
        for per_object in tensors.values():
            for key, t in per_object.items():
                if not isinstance(t, (tf.Tensor, dict)) and hasattr(t, "tensor"):
                    t = t.tensor  # a SaveSpec (tensor_callable.Callable): its value now
                elif callable(t):
                    t = t()
                if isinstance(t, dict):  # {slice spec: tensor}: a partitioned variable
                    raise _CannotSnapshot(key)
                values[key] = t
        return values

    def _write_files(self, prefix: str, values: dict, callbacks) -> None:
        t0 = time.perf_counter()
        try:
            write_checkpoint(prefix, values)
            for cb in callbacks:
                cb(prefix)
        except BaseException as e:  # noqa: BLE001 - raised in the training thread by sync()
            self._write_error = e
        finally:
            self.write_seconds.append(time.perf_counter() - t0)

    def sync(self) -> None:
        """Wait for the write in flight; raise its error, if it failed, in the caller's thread."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.join()
        err, self._write_error = self._write_error, None
        if err is not None:
            raise err


def write_checkpoint(prefix: str | os.PathLike, values: dict) -> str:
    """Write ``{key: tensor or array}`` as TensorFlow checkpoint ``prefix`` (index + one data file), whole
    or not at all: into a temp folder ``<name>_temp.*`` beside it, data moved in first, index last."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f"{prefix.name}_temp.", dir=prefix.parent))
    try:
        keys = sorted(values)
        with tf.device("/cpu:0"):
            tf.raw_ops.SaveV2(prefix=str(tmp_dir / prefix.name), tensor_names=keys,
                              shape_and_slices=[""] * len(keys),
                              tensors=[tf.convert_to_tensor(values[k]) for k in keys])
        index = tmp_dir / f"{prefix.name}.index"
        for f in sorted(tmp_dir.iterdir()):
            if f != index:
                os.replace(f, prefix.parent / f.name)
        os.replace(index, prefix.parent / index.name)
    finally:
        for f in tmp_dir.iterdir() if tmp_dir.is_dir() else []:
            f.unlink()
        if tmp_dir.is_dir():
            tmp_dir.rmdir()
    return str(prefix)
