"""Compact Drive copies (helpers.train.drive_copy): what a resume needs, in a quarter of the bytes.

Unit tests on small checkpoints written by TensorFlow, then a real demo-profile resume from a
Drive-only copy against a resume from the full local checkpoint.
"""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from _training_support import REPO, new_workspace, optimizer_iterations
from helpers.train import checkpoints as ckpts
from helpers.train import drive_copy, mirror, training


def trainer_checkpoint(folder, step=7, frozen_value=None):
    """A checkpoint shaped like Model Garden's trainer's: global_step, a model with a trainable
    and a frozen layer, SGD with momentum (slots for the trainable one only)."""
    model = tf_keras.Sequential([tf_keras.layers.Dense(256, input_shape=(32,), name="frozen"),
                                 tf_keras.layers.Dense(256, name="head")])
    model.layers[0].trainable = False
    if frozen_value is not None:
        model.layers[0].kernel.assign(tf.fill([32, 256], frozen_value))
    opt = tf_keras.optimizers.legacy.SGD(learning_rate=1e-4, momentum=0.9)  # Model Garden's kind
    gstep = tf.Variable(0, dtype=tf.int64)
    for _ in range(step):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(tf.ones([4, 32])) ** 2)
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        gstep.assign_add(1)
    ck = tf.train.Checkpoint(global_step=gstep, model=model, optimizer=opt)
    return ck, tf.train.CheckpointManager(ck, str(folder), max_to_keep=3).save(checkpoint_number=step)


def read_all(prefix):
    r = tf.train.load_checkpoint(str(prefix))
    return {k: r.get_tensor(k) for k in r.get_variable_to_shape_map()}, r.get_variable_to_dtype_map()


def size(prefix):
    return sum(f.stat().st_size for f in mirror.checkpoint_files(prefix))


def test_compact_then_expand_gives_the_checkpoint_back_but_momentum_and_float16_rounding(tmp_path):
    _, full = trainer_checkpoint(tmp_path / "local")
    small = drive_copy.compact(full, tmp_path / "drive" / "ckpt-7")
    assert drive_copy.is_compact(small) and not drive_copy.is_compact(full)
    back = drive_copy.expand(small, tmp_path / "back" / "ckpt-7")
    (a, dtypes), (b, back_dtypes) = read_all(full), read_all(back)
    assert a.keys() == b.keys() and dtypes == back_dtypes  # the same keys, dtypes, object graph
    slots = [k for k in a if drive_copy.is_slot(k)]
    weights = [k for k in a if k.startswith("model/") and not drive_copy.is_slot(k)]
    assert slots and weights
    for k in a:
        if k in slots:
            assert not b[k].any(), k  # momentum starts again at zero
        elif k in weights:
            np.testing.assert_allclose(b[k], a[k], rtol=2 ** -11, atol=1e-7, err_msg=k)
        else:
            assert np.array_equal(b[k], a[k]), k  # step, iterations, learning rate, graph: exact
    assert b["optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE"] == 7
    assert size(small) < 0.3 * size(full)  # float16 weights, no momentum
    assert ckpts.check_checkpoint(small) is None and ckpts.check_checkpoint(back) is None


def test_an_expanded_copy_restores_into_the_trainer_objects(tmp_path):
    ck, full = trainer_checkpoint(tmp_path / "local")
    back = drive_copy.expand(drive_copy.compact(full, tmp_path / "drive" / "ckpt-7"), tmp_path / "back" / "ckpt-7")
    fresh, _ = trainer_checkpoint(tmp_path / "other", step=1)
    fresh.restore(str(back)).assert_existing_objects_matched()
    assert int(fresh.optimizer.iterations.numpy()) == int(fresh.global_step.numpy()) == 7


def test_weights_equal_to_the_base_stay_in_the_base(tmp_path):
    _, full = trainer_checkpoint(tmp_path / "local", frozen_value=0.25)
    drive = tmp_path / "drive"
    base = drive_copy.make_base(full, drive / drive_copy.BASE_DIR / "ckpt-0")
    assert drive_copy.read_base(drive).token == base.token
    small = drive_copy.compact(full, drive / "ckpt-7", base=base)
    keys = json.loads(tf.train.load_checkpoint(str(small)).get_tensor(drive_copy.MANIFEST_KEY))["keys"]
    from_base = sorted(k for k, spec in keys.items() if spec["stored"] == "base")
    assert from_base and all(k.startswith("model/") for k in from_base)
    back, _ = read_all(drive_copy.expand(small, tmp_path / "back" / "ckpt-7"))
    for k in from_base:
        np.testing.assert_array_equal(back[k], read_all(full)[0][k])  # exact: the base is float32

    shutil.rmtree(drive / drive_copy.BASE_DIR)
    drive_copy.make_base(full, drive / drive_copy.BASE_DIR / "ckpt-0")  # another base, same name
    with pytest.raises(drive_copy.DriveCopyError, match="missing or was replaced"):
        drive_copy.expand(small, tmp_path / "again" / "ckpt-7")


def test_a_weight_beyond_float16s_range_stays_float32(tmp_path):
    _, full = trainer_checkpoint(tmp_path / "local", frozen_value=1e6)
    back, _ = read_all(drive_copy.expand(drive_copy.compact(full, tmp_path / "d" / "ckpt-7"), tmp_path / "b" / "ckpt-7"))
    key = next(k for k in back if k.startswith("model/") and "kernel" in k and back[k].max() > 1e5)
    assert (back[key] == 1e6).all()


def test_full_checkpoint_passes_ordinary_ones_and_expands_a_drive_copy_once(tmp_path):
    _, full = trainer_checkpoint(tmp_path / "local")
    assert drive_copy.full_checkpoint(full) == tmp_path / "local" / "ckpt-7"
    small = drive_copy.compact(full, tmp_path / "drive" / "ckpt-7")
    out = drive_copy.full_checkpoint(small, cache_root=tmp_path / "cache")
    assert out != small and ckpts.check_checkpoint(out) is None and not drive_copy.is_compact(out)
    mtime = out.with_name(out.name + ".index").stat().st_mtime_ns
    assert drive_copy.full_checkpoint(small, cache_root=tmp_path / "cache") == out
    assert out.with_name(out.name + ".index").stat().st_mtime_ns == mtime


# ----------------------------------------------------------------------------- a real resume
RESUME = """
import json, sys
import tensorflow as tf
tf.keras.utils.set_random_seed(0)
tf.config.experimental.enable_op_determinism()
from helpers.train import training
from helpers.train.curves import read_curves
res = training.train_stage("heads", "demo", sys.argv[1], local_checkpoints=sys.argv[2], progress=False)
steps, losses = read_curves(sys.argv[1], "heads")["total_loss"]
print("RESULT " + json.dumps({"start": res.start_step, "end": res.end_step, "iterations": res.optimizer_iterations,
                              "lr": res.learning_rate, "losses": dict(zip(steps, losses))}))
"""


def resume(ws_root, local):
    out = subprocess.run([sys.executable, "-c", RESUME, str(ws_root), str(local)], cwd=REPO, capture_output=True,
                         text=True, env={**__import__("os").environ, "PYTHONPATH": str(REPO),
                                         "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=900)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, out.stdout[-2000:] + out.stderr[-3000:]
    return json.loads(line[-1][len("RESULT "):])


def test_a_resume_from_the_drive_copy_alone_trains_on_like_one_from_the_full_checkpoint(base):
    """Steps 0-5 with checkpoints mirrored to "Drive"; then steps 6-10 twice, seeded alike:
    from the full local checkpoint, and on a new runtime (empty local disk) from Drive's compact
    copy. Same step, iteration count and learning rate; losses within 2% at step 6 (float16
    weights, same data) and within 10% on average over steps 6-10 (momentum restarts at zero)."""
    ws = new_workspace(base, "drive_copy_resume")
    local = base / "drive_copy_resume_local"
    training.train_stage("heads", "demo", ws, local_checkpoints=local, stop_at_step=5, progress=False)
    sdir = ws.checkpoints / "heads"
    assert drive_copy.is_compact(sdir / "ckpt-5") and drive_copy.read_base(sdir) is not None
    twin = base / "drive_copy_resume_twin"
    shutil.copytree(ws.root, twin)

    full = resume(ws.root, local)             # the same runtime: its local full ckpt-5
    drive = resume(twin, base / "new_vm")     # a new runtime: Drive's compact ckpt-5 only
    assert (full["start"], full["end"]) == (drive["start"], drive["end"]) == (5, 10)
    assert full["iterations"] == drive["iterations"] == 10
    assert drive["lr"] == pytest.approx(full["lr"], rel=1e-6)
    a = np.array([full["losses"][str(s)] for s in range(6, 11)])
    b = np.array([drive["losses"][str(s)] for s in range(6, 11)])
    print(f"losses, steps 6-10: from the full checkpoint {np.round(a, 4)}, from the Drive copy {np.round(b, 4)}")
    assert abs(b[0] - a[0]) <= 0.02 * a[0], (a, b)
    assert abs(b.mean() - a.mean()) <= 0.10 * a.mean(), (a, b)
    assert optimizer_iterations(twin / "checkpoints" / "heads" / "ckpt-10") == 10


def test_the_expansion_cache_keeps_the_newest_few(tmp_path):
    made = []
    for i in range(drive_copy.CACHE_KEEP + 2):
        _, full = trainer_checkpoint(tmp_path / f"local{i}", step=i + 1)
        made.append(drive_copy.full_checkpoint(drive_copy.compact(full, tmp_path / f"drive{i}" / f"ckpt-{i + 1}"),
                                               cache_root=tmp_path / "cache"))
    kept = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(kept) == drive_copy.CACHE_KEEP and made[-1].parent.name in kept and made[0].parent.name not in kept
