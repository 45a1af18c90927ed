"""Checkpoints written in the background (helpers.train.background_save): the snapshot is the
state at the save, whatever training does while the files are written; files and keys are those
of a synchronous save; a failed write is raised in the training thread."""
import threading

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from helpers.train import background_save as bg
from helpers.train import checkpoints as ckpts


def tiny_training():
    """A variable, a step counter and SGD with momentum: ``step()`` changes all of them."""
    w = tf.Variable(tf.random.normal([300, 300]))
    gstep = tf.Variable(0, dtype=tf.int64)
    opt = tf_keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(w * w)
        opt.apply_gradients([(tape.gradient(loss, w), w)])
        gstep.assign_add(1)
        w.assign_add(tf.ones_like(w))  # an in-place update too

    step()  # the optimizer's slots exist
    return dict(global_step=gstep, w=w, optimizer=opt), step


def values(prefix) -> dict:
    r = tf.train.load_checkpoint(str(prefix))
    return {k: r.get_tensor(k) for k in r.get_variable_to_shape_map()
            if k not in ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")}


def test_the_checkpoint_holds_the_state_at_the_save_while_training_goes_on(tmp_path, monkeypatch):
    items, step = tiny_training()
    ck = bg.BackgroundCheckpoint(**items)
    mgr = tf.train.CheckpointManager(ck, str(tmp_path), max_to_keep=3)
    expected = {"w": items["w"].numpy().copy(), "step": int(items["global_step"].numpy())}
    trained_on, real_write = threading.Event(), bg.write_checkpoint

    def write_after_three_more_steps(prefix, vals):
        trained_on.wait(60)
        return real_write(prefix, vals)

    monkeypatch.setattr(bg, "write_checkpoint", write_after_three_more_steps)
    path = mgr.save(checkpoint_number=expected["step"])
    assert mgr.latest_checkpoint is None  # not in the state file before it is written
    for _ in range(3):
        step()
    trained_on.set()
    mgr.sync()
    assert mgr.latest_checkpoint == path and ckpts.check_checkpoint(path) is None
    got = values(path)
    np.testing.assert_array_equal(got["w/.ATTRIBUTES/VARIABLE_VALUE"], expected["w"])
    assert got["global_step/.ATTRIBUTES/VARIABLE_VALUE"] == expected["step"] == 1
    assert got["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] == 1
    assert int(items["global_step"].numpy()) == 4  # training did go on


def test_files_keys_and_values_are_those_of_a_synchronous_save(tmp_path):
    items, step = tiny_training()
    sync_prefix = tf.train.Checkpoint(**items).write(str(tmp_path / "sync" / "ckpt-1"))
    mgr = tf.train.CheckpointManager(bg.BackgroundCheckpoint(**items), str(tmp_path / "bg"), max_to_keep=3)
    path = mgr.save(checkpoint_number=1)
    mgr.sync()
    a, b = values(sync_prefix), values(path)
    assert a.keys() == b.keys() and len(a) == 5  # w, its momentum, step, iterations, learning rate
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert sorted(p.name for p in (tmp_path / "bg").iterdir()) == [
        "checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index"]

    w_saved = items["w"].numpy().copy()
    step()
    restored = tf.train.CheckpointManager(bg.BackgroundCheckpoint(**items), str(tmp_path / "bg"), max_to_keep=3)
    assert restored.restore_or_initialize() == path
    np.testing.assert_array_equal(items["w"].numpy(), w_saved)


def test_the_manager_keeps_the_newest_and_the_state_file_names_only_whole_checkpoints(tmp_path):
    items, step = tiny_training()
    mgr = tf.train.CheckpointManager(bg.BackgroundCheckpoint(**items), str(tmp_path), max_to_keep=3)
    for n in range(1, 7):
        step()
        mgr.save(checkpoint_number=n)
    mgr.sync()
    assert [s for s, _ in ckpts.list_checkpoints(tmp_path)] == [4, 5, 6]
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-6")
    assert not [p for p in tmp_path.iterdir() if ckpts.TEMP_RE.match(p.name)]


def test_a_failed_write_is_raised_in_the_training_thread_and_leaves_no_temp_folder(tmp_path, monkeypatch):
    items, _ = tiny_training()
    mgr = tf.train.CheckpointManager(bg.BackgroundCheckpoint(**items), str(tmp_path), max_to_keep=3)

    def full_disk(*a, **kw):
        raise tf.errors.ResourceExhaustedError(None, None, f"{tmp_path}/ckpt-1_temp/part; No space left on device")

    monkeypatch.setattr(tf.raw_ops, "SaveV2", full_disk)
    mgr.save(checkpoint_number=1)  # returns: the write fails in the background ...
    with pytest.raises(tf.errors.ResourceExhaustedError, match="No space left"):
        mgr.sync()  # ... and the training thread hears of it
    assert mgr.latest_checkpoint is None and ckpts.list_checkpoints(tmp_path) == []
    assert not [p for p in tmp_path.iterdir() if ckpts.TEMP_RE.match(p.name)]


def test_a_save_blocks_only_for_the_snapshot(tmp_path, monkeypatch):
    """The caller returns while the files are still being written (a writer held back here)."""
    items, _ = tiny_training()
    ck = bg.BackgroundCheckpoint(**items)
    release, real_write = threading.Event(), bg.write_checkpoint
    monkeypatch.setattr(bg, "write_checkpoint", lambda p, v: (release.wait(60), real_write(p, v))[1])
    mgr = tf.train.CheckpointManager(ck, str(tmp_path), max_to_keep=3)
    mgr.save(checkpoint_number=1)
    assert ckpts.list_checkpoints(tmp_path) == []  # returned before the write
    release.set()
    mgr.sync()
    assert [s for s, _ in ckpts.list_checkpoints(tmp_path)] == [1]
    assert len(ck.blocking_seconds) == len(ck.write_seconds) == 1
