"""A GPU's code path, run on the CPU: what a Colab user's T4 runs, before a Colab user runs it.

With the accelerator forced to "gpu", the demo profile with ``mixed_precision`` trains as the
colab profile does on a T4: Model Garden's mixed float16 policy, its loss-scaled optimizer and
float16 input batches from the training input. The run is killed, resumed, mirrored from
local disk to a Drive-like workspace, continued by the next stage, and its model predicts.
"""
import os
import signal
import time

import numpy as np
import pytest

from _training_support import new_workspace, run_child
from helpers.train import checkpoints as ckpts
from helpers.train import mirror, training

GPU = {"accelerator": "gpu", "mixed_precision": True}


def test_the_gpu_input_is_float16(tmp_path):
    """The input dtype Model Garden's float16 policy expects: float16 images, float32 targets."""
    import dataclasses

    import tensorflow as tf

    from helpers.data import shards as shard_lib
    from helpers.train.config import get_profile
    from helpers.train.configs.nuclei_maskrcnn import experiment_config
    from helpers.train.tasks.nuclei_maskrcnn import NucleiMaskRCNNTask

    files = [str(f) for f in shard_lib.select_shards(new_workspace(tmp_path, "ws").shards)]
    profile = dataclasses.replace(get_profile("demo"), mixed_precision=True)
    for acc, dtype in (("gpu", tf.float16), ("cpu", tf.float32)):
        cfg = experiment_config(profile, "heads", files, accelerator=acc)
        assert cfg.runtime.mixed_precision_dtype == dtype.name
        images, labels = next(iter(NucleiMaskRCNNTask(cfg.task).build_inputs(cfg.task.train_data)))
        assert images.dtype == dtype and labels["gt_boxes"].dtype == tf.float32
        assert labels["rpn_box_targets"]["2"].dtype == tf.float32


def test_the_gpu_code_path_trains_resumes_mirrors_and_predicts(tmp_path):
    import tensorflow as tf

    ws = new_workspace(tmp_path, "gpu")
    local = tmp_path / "local"
    sdir, ldir = ws.checkpoints / "heads", mirror.local_checkpoint_root(ws.root, local) / "heads"
    child = run_child(f"""
from helpers.train import training
training.train_stage('heads', 'demo', {str(ws.root)!r}, steps=10, local_checkpoints={str(local)!r},
                     progress=False, accelerator='gpu', mixed_precision=True)
""")
    deadline, killed = time.time() + 600, False
    while time.time() < deadline and child.poll() is None:
        if ldir.is_dir() and [s for s, _ in ckpts.list_checkpoints(ldir) if s >= 5]:
            os.kill(child.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.05)
    out = child.communicate(timeout=60)[0]
    assert killed, f"the run ended before its first checkpoint:\n{out[-3000:]}"

    res = training.train_stage("heads", "demo", ws, steps=10, local_checkpoints=local, progress=False, **GPU)
    assert res.finished and res.start_step >= 5 and res.end_step == 10, res
    keys = [k for k, _ in tf.train.list_variables(str(ldir / "ckpt-10"))]
    assert any("loss_scale" in k for k in keys), "no loss scale saved: not Model Garden's float16 optimizer"
    assert ckpts.check_checkpoint(sdir / "ckpt-10") is None  # the mirrored copy on the workspace

    res = training.train_stage("all", "demo", ws, steps=5, local_checkpoints=local, progress=False, **GPU)
    assert res.finished and res.end_step == 5  # a NaN loss would have stopped it

    from helpers.infer.model import load_model, predict_image

    model, params = load_model(ws, "all", min_score=0.0)
    image = np.random.default_rng(0).integers(0, 256, (200, 240, 3), dtype=np.uint8)
    det = predict_image(model, params, image, score_threshold=0.0)
    assert len(det["scores"]) > 0 and np.isfinite(det["scores"]).all()
    assert tuple(det["image_shape"]) == (200, 240)
