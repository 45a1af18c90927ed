"""Stage runner on the demo profile with real Model Garden (no mocks).

One heads run and one `all` run are shared by the tests (see _training_support);
the kill/resume and Mirrored tests run their own short subprocesses.
"""
import json
import os
import shutil
import signal
import time

import numpy as np
import pytest

from _training_support import (backbone_vars, file_snapshot, model_vars, new_workspace, optimizer_iterations,
                               run_child, tear)
from helpers.train import checkpoints as ckpts
from helpers.train import training


def test_heads_writes_checkpoints_at_5_and_10(heads):
    ws, res = heads
    assert res.status == "finished" and (res.start_step, res.end_step) == (0, 10)
    steps = [s for s, _ in ckpts.list_checkpoints(ws.checkpoints / "heads")]
    assert 5 in steps and 10 in steps
    assert set(steps) <= {0, 5, 10}  # ckpt-0 = starting weights; nothing off the 5-step grid
    assert res.optimizer_iterations == 10
    assert optimizer_iterations(ws.checkpoints / "heads" / "ckpt-10") == 10
    info = json.loads((ws.checkpoints / "heads" / "stage.json").read_text())
    assert info["planned_steps"] == 10 and info["profile"] == "demo" and info["fingerprint"]
    assert list((ws.checkpoints / "heads" / "train").glob("events.out.tfevents.*"))  # TensorBoard


def test_heads_leaves_backbone_unchanged_and_trains_the_rest(heads):
    ws, _ = heads
    d = ws.checkpoints / "heads"
    b0, b10 = backbone_vars(d / "ckpt-0"), backbone_vars(d / "ckpt-10")
    assert len(b0) > 50 and b0.keys() == b10.keys()
    for k in b0:  # kernels and BN statistics alike
        np.testing.assert_array_equal(b0[k], b10[k], err_msg=k)
    m0, m10 = model_vars(d / "ckpt-0"), model_vars(d / "ckpt-10")
    changed = [k for k in m0 if not k.startswith("backbone/") and not np.array_equal(m0[k], m10[k])]
    assert any(k.startswith("decoder/") for k in changed)  # FPN trains
    assert any(k.startswith("rpn_head/") for k in changed)
    assert any(k.startswith("mask_head/") for k in changed)


def test_all_starts_from_heads_weights_and_changes_backbone(heads_and_all):
    ws, res = heads_and_all
    assert res.status == "finished" and res.start_step == 0
    heads_final = model_vars(ws.checkpoints / "heads" / "ckpt-10")
    all_start = model_vars(ws.checkpoints / "all" / "ckpt-0")
    assert heads_final.keys() == all_start.keys()
    for k in heads_final:
        np.testing.assert_array_equal(heads_final[k], all_start[k], err_msg=k)
    b0 = backbone_vars(ws.checkpoints / "all" / "ckpt-0")
    b10 = backbone_vars(ws.checkpoints / "all" / "ckpt-10")
    assert any(not np.array_equal(b0[k], b10[k]) for k in b0 if k.endswith("kernel/.ATTRIBUTES/VARIABLE_VALUE"))
    assert json.loads((ws.checkpoints / "all" / "stage.json").read_text())["init_checkpoint"].endswith(
        os.path.join("heads", "ckpt-10"))


def test_rerunning_a_finished_stage_writes_nothing(heads, capsys):
    ws, _ = heads
    before = file_snapshot(ws.root)
    res = training.train_stage("heads", "demo", ws, progress=False)
    assert res.status.startswith("skipped") and res.end_step == 10
    assert "already finished" in capsys.readouterr().out
    assert file_snapshot(ws.root) == before


def test_sigkill_after_step_5_resumes_at_5_like_an_uninterrupted_run(base, heads):
    _, full = heads
    ws = new_workspace(base, "killed")
    child = run_child(f"from helpers.train import training; training.train_stage('heads', 'demo', "
                      f"{str(ws.root)!r}, progress=False)")
    sdir = ws.checkpoints / "heads"
    deadline = time.time() + 400
    try:
        while time.time() < deadline and child.poll() is None:
            if (sdir / "ckpt-5.index").exists() and ckpts.check_checkpoint(sdir / "ckpt-5", deep=False) is None:
                break
            time.sleep(0.02)
        assert child.poll() is None, "child ended before its step-5 checkpoint:\n" + child.stdout.read()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert max(s for s, _ in ckpts.list_checkpoints(sdir)) == 5  # killed between 5 and 10

    res = training.train_stage("heads", "demo", ws, progress=False)
    assert (res.start_step, res.end_step, res.status) == (5, 10, "finished")
    assert res.optimizer_iterations == full.optimizer_iterations == 10
    assert res.learning_rate == pytest.approx(full.learning_rate, rel=1e-6)
    assert optimizer_iterations(sdir / "ckpt-10") == 10

    from helpers.train.curves import read_curves
    curves = read_curves(ws, "heads")
    steps, _ = curves["total_loss"]
    assert steps == list(range(1, 11))  # one point per step across the two runs
    assert len(curves["_run_starts"]) == 2 and curves["_run_starts"][1] == 6
    lr_steps, lrs = curves["learning_rate"]
    full_lr = read_curves(heads[0], "heads")["learning_rate"][1]
    np.testing.assert_allclose(lrs, full_lr, rtol=1e-6)  # same schedule point at every step


def test_torn_latest_checkpoint_falls_back_with_a_warning(base, heads):
    ws = new_workspace(base, "torn", copy_from=heads[0].root)
    sdir = ws.checkpoints / "heads"
    tear(sdir, 10)
    with pytest.warns(ckpts.TornCheckpointWarning, match="ckpt-10"):
        latest = ckpts.latest_complete(sdir)
    assert latest[0] == 5
    assert not (sdir / "ckpt-10.index").exists() and (sdir / "torn" / "ckpt-10.index").exists()
    import tensorflow as tf
    assert tf.train.latest_checkpoint(str(sdir)).endswith("ckpt-5")  # what CheckpointManager restores
    # the stage is no longer finished: train_stage would resume from 5
    assert "step 5/10" in training.stage_status(ws, "heads")
    from helpers.train.stages import StageState, stage_progress

    progress = stage_progress(ws, "heads")
    assert (progress.state, progress.step, progress.planned_steps) == (StageState.IN_PROGRESS, 5, 10)


def test_changed_config_on_a_half_trained_stage_is_a_clear_error(base, heads):
    ws = new_workspace(base, "changed", copy_from=heads[0].root)
    sdir = ws.checkpoints / "heads"
    for f in sdir.glob("ckpt-10.*"):
        f.unlink()
    ckpts.write_state(sdir)
    with pytest.raises(training.StageConfigMismatch, match="train_steps: 10 -> 20"):
        training.train_stage("heads", "demo", ws, steps=20, progress=False)
    with pytest.raises(training.StageConfigMismatch, match="learning_rate"):
        training.train_stage("heads", "demo", ws, learning_rate=0.5, progress=False)


def test_all_needs_a_finished_heads_stage(base):
    ws = new_workspace(base, "no_heads")
    with pytest.raises(training.ParentStageNotFinished, match="heads"):
        training.train_stage("all", "demo", ws, progress=False)
    assert not (ws.checkpoints / "all").exists()


def test_specialist_needs_a_subset(base):
    ws = new_workspace(base, "spec")
    with pytest.raises(ValueError, match="organs"):
        training.train_stage("specialist-colon", "demo", ws, progress=False)


def test_mirrored_strategy_over_two_logical_cpus(base):
    ws = new_workspace(base, "mirrored")
    code = f"""
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from helpers.train import runtime, training
r = training.train_stage('heads', 'demo', {str(ws.root)!r}, steps=3, strategy='mirrored',
                         images_per_batch=2, progress=False)
print('REPLICAS', runtime.pick_strategy('mirrored').num_replicas_in_sync, 'END', r.end_step, r.status)
"""
    child = run_child(code)
    out, _ = child.communicate(timeout=600)
    assert child.returncode == 0, out[-3000:]
    assert "REPLICAS 2 END 3 finished" in out
    assert optimizer_iterations(ws.checkpoints / "heads" / "ckpt-3") == 3


def test_time_budget_stops_with_a_checkpoint(base, heads):
    ws = new_workspace(base, "budget", copy_from=heads[0].root)
    shutil.rmtree(ws.checkpoints / "all", ignore_errors=True)
    # a budget far too small for 10,000 steps: the run stops itself and saves where it got to
    res = training.train_stage("all", "demo", ws, steps=10_000, time_budget_s=60.0, progress=False)
    assert res.status == "stopped: time budget" and res.end_step < 10_000
    assert res.end_step > res.start_step  # it trained before it stopped
    latest = ckpts.latest_complete(ws.checkpoints / "all")
    assert latest[0] == res.end_step  # the stop saved a checkpoint at the step reached
    assert "in progress" in training.stage_status(ws, "all")


@pytest.mark.slow
def test_colab_profile_builds_full_size_model_on_cpu():
    from helpers.train.configs import nuclei_maskrcnn as experiment
    from official.vision.tasks import maskrcnn

    cfg = experiment.experiment_config("colab", "heads", ["x.tfrecord"], accelerator="cpu")
    model = maskrcnn.MaskRCNNTask(cfg.task).build_model()
    n = model.count_params()
    assert n > 44_000_000  # torchvision's maskrcnn_resnet50_fpn_v2 layout: 46.4 M parameters
    assert not model.backbone.trainable


def test_specialist_trains_on_the_chosen_organ_only(base):
    import json as _json

    ws = new_workspace(base, "spec_plan")
    index = _json.loads((ws.shards / "index.json").read_text())["shards"]
    organ = next(e["organ"] for e in index if e["split"] == "train")
    _, cfg, sdir = training.plan_stage("specialist-x", "demo", ws, organs=[organ])
    files = cfg.task.train_data.input_path
    want = {e["file"] for e in index if e["organ"] == organ and e["split"] == "train"}
    assert {os.path.basename(f) for f in files} == want and sdir.name == "specialist-x"
    assert cfg.task.freeze_backbone is False and cfg.task.init_checkpoint_modules == "all"


def test_a_begun_stage_keeps_its_input_knobs_when_the_profile_default_changes(base):
    """The cpu profile now jitters stain (0.1); a heads stage begun before (its stage.json
    records no stain_jitter, or 0) must resume as it began, not as a different model."""
    from helpers.train import config
    from helpers.atomic import atomic_write_json

    ws = new_workspace(base, "begun_knobs")
    assert config.get_profile("cpu").stain_jitter == 0.1
    _, cfg, _ = training.plan_stage("heads", "cpu", ws)
    assert (cfg.task.input_scale, cfg.task.stain_jitter) == (1.0, 0.1)  # not begun: the profile's
    (ws.checkpoints / "heads").mkdir(parents=True)
    atomic_write_json(ws.checkpoints / "heads" / training.STAGE_FILE, {"profile": "cpu"})
    _, cfg, _ = training.plan_stage("heads", "cpu", ws)
    assert (cfg.task.input_scale, cfg.task.stain_jitter) == (1.0, 0.0)
    atomic_write_json(ws.checkpoints / "heads" / training.STAGE_FILE, {"profile": "cpu", "stain_jitter": 0.05})
    _, cfg, _ = training.plan_stage("heads", "cpu", ws)
    assert cfg.task.stain_jitter == 0.05
    _, cfg, _ = training.plan_stage("heads", "cpu", ws, stain_jitter=0.2)  # said outright: taken
    assert cfg.task.stain_jitter == 0.2
    # and its plan: the from-scratch plan is now 500 + 1,300; a stage begun at 1,500 keeps 1,500
    assert config.get_profile("cpu", from_scratch=True).steps["all"] == 1300
    atomic_write_json(ws.checkpoints / "heads" / training.STAGE_FILE, {"profile": "cpu", "from_scratch": True})
    assert training.plan_stage("all", "cpu", ws)[1].trainer.train_steps == 1300  # not begun
    (ws.checkpoints / "all").mkdir(parents=True)
    atomic_write_json(ws.checkpoints / "all" / training.STAGE_FILE,
                      {"profile": "cpu", "from_scratch": True, "planned_steps": 1500})
    assert training.plan_stage("all", "cpu", ws)[1].trainer.train_steps == 1500
    assert training.plan_stage("all", "cpu", ws, steps=1800)[1].trainer.train_steps == 1800


def test_a_colab_stage_begun_under_the_former_recipe_resumes_with_its_plan(base):
    """The colab recipe grew from 500 + 2,000 to 1,000 + 12,000 steps once the input stopped
    holding the T4 back: a stage begun at 2,000 finishes at 2,000, on its own schedule."""
    from helpers.atomic import atomic_write_json
    from helpers.train import config

    assert config.get_profile("colab").steps == {"heads": 1000, "all": 12000, "specialist": 2000}
    ws = new_workspace(base, "begun_colab")
    for stage, planned in (("heads", 500), ("all", 2000)):
        (ws.checkpoints / stage).mkdir(parents=True)
        atomic_write_json(ws.checkpoints / stage / training.STAGE_FILE, {"profile": "colab", "planned_steps": planned})
    for stage, planned in (("heads", 500), ("all", 2000)):
        cfg = training.plan_stage(stage, "colab", ws, accelerator="gpu")[1]
        assert cfg.trainer.train_steps == planned
        assert cfg.trainer.optimizer_config.learning_rate.cosine.decay_steps == planned
        # and the notebooks' summary line says so, not the profile's 1,000 / 12,000
        summary = training.stage_summary(ws, "colab", stage)
        assert f"{planned} steps for stage {stage}" in summary and summary.endswith(f"step 0/{planned}")
    assert "1800 steps for stage all" in training.stage_summary(ws, "colab", "all", steps=1800)
    tuned = training.stage_summary(ws, "colab", "heads", start_from="/drive/course/checkpoints/all")
    assert "start: every weight of the trained stage /drive/course/checkpoints/all" in tuned
    assert tuned.endswith("step 0/500")


def test_the_all_stage_continues_its_parents_mask_head_and_crop_sampling(base):
    """mask_upsample fixes the mask head's weights' shapes, so `all` must take its parent's;
    crop_sampling follows like the other input knobs. A record older than both knobs means
    28x28 masks and uniform windows."""
    from helpers.atomic import atomic_write_json

    ws = new_workspace(base, "inherit_mask56")
    (ws.checkpoints / "heads").mkdir(parents=True)
    atomic_write_json(ws.checkpoints / "heads" / training.STAGE_FILE,
                      {"profile": "cpu", "from_scratch": True, "mask_upsample": 4, "crop_sampling": "nuclei"})
    _, cfg, _ = training.plan_stage("all", "cpu", ws)
    assert cfg.task.model.mask_head.upsample_factor == 4 and cfg.task.crop_sampling == "nuclei"
    _, cfg, _ = training.plan_stage("heads", "cpu", ws)  # begun: keeps its own
    assert cfg.task.model.mask_head.upsample_factor == 4 and cfg.task.crop_sampling == "nuclei"
    atomic_write_json(ws.checkpoints / "heads" / training.STAGE_FILE, {"profile": "cpu", "from_scratch": True})
    _, cfg, _ = training.plan_stage("heads", "cpu", ws, crop_sampling=None)
    assert cfg.task.model.mask_head.upsample_factor == 2 and cfg.task.crop_sampling == "uniform"


def test_a_stage_begun_before_the_coco_start_resumes_as_it_began(base):
    """The colab profile now starts from COCO weights (ResNet-50, P2-P6...) with a frozen
    backbone batch norm; a stage begun with Model Garden's ImageNet ResNet-101 (its stage.json
    records no start) keeps that architecture, its rates and its trainable batch norm, and so
    do the stages that continue it."""
    from helpers.atomic import atomic_write_json
    from helpers.train import config

    ws = new_workspace(base, "begun_imagenet")
    _, fresh, _ = training.plan_stage("heads", "colab", ws, accelerator="gpu")
    assert fresh.task.model.backbone.get().model_id == 50 and fresh.task.model.max_level == 6
    (ws.checkpoints / "heads").mkdir(parents=True)
    atomic_write_json(ws.checkpoints / "heads" / training.STAGE_FILE, {"profile": "colab"})
    for stage in ("heads", "all"):
        _, cfg, _ = training.plan_stage(stage, "colab", ws, accelerator="gpu")
        m = cfg.task.model
        assert (m.backbone.get().model_id, m.max_level, m.rpn_head.num_convs) == (101, 5, 1)
        assert m.norm_activation.norm_epsilon == 1e-4 and cfg.task.identity_norms is False
        lr = cfg.trainer.optimizer_config.learning_rate.cosine.initial_learning_rate
        assert lr == (0.01 if stage == "heads" else 0.001)
    _, heads, _ = training.plan_stage("heads", "colab", ws, accelerator="gpu")
    assert heads.task.model.backbone.get().bn_trainable is True  # as it began
    atomic_write_json(ws.checkpoints / "heads" / training.STAGE_FILE, {"profile": "colab", "pretrained": "coco"})
    _, cfg, _ = training.plan_stage("all", "colab", ws, accelerator="gpu")
    assert cfg.task.model.max_level == 6 and cfg.task.model.backbone.get().bn_trainable is False
    with pytest.raises(config.ConfigError, match="started from 'coco'"):
        training.plan_stage("all", "colab", ws, pretrained="imagenet")


def test_later_stages_follow_the_heads_stages_from_scratch_choice(base):
    """all / final / specialists inherit from_scratch from the heads record; final trains on
    train + val by default."""
    import json as _json

    from helpers.train import config
    from helpers.atomic import atomic_write_json

    ws = new_workspace(base, "scratch_plan")
    lr = lambda c: c.trainer.optimizer_config.learning_rate.cosine.initial_learning_rate  # noqa: E731
    demo = config.get_profile("demo")
    _, cfg, _ = training.plan_stage("all", "demo", ws)
    assert lr(cfg) == demo.learning_rate_all  # no heads record: pretrained recipe
    (ws.checkpoints / "heads").mkdir(parents=True)
    atomic_write_json(ws.checkpoints / "heads" / training.STAGE_FILE,
                      {"from_scratch": True, "scale": 2.0, "stain_jitter": 0.05})
    for stage in ("all", "final"):
        _, cfg, _ = training.plan_stage(stage, "demo", ws)
        assert (cfg.task.input_scale, cfg.task.stain_jitter) == (2.0, 0.05)
        assert cfg.task.freeze_backbone is False
        assert lr(cfg) == config.get_profile("demo", from_scratch=True).learning_rate_all
    _, cfg, _ = training.plan_stage("all", "cpu", ws)
    assert cfg.task.model.backbone.get().model_id == 18  # the cpu profile's scratch recipe
    with pytest.raises(config.ConfigError, match="from_scratch"):
        training.plan_stage("all", "cpu", ws, from_scratch=False)  # would not fit the parent
    _, heads, _ = training.plan_stage("heads", "demo", ws, from_scratch=True)
    assert heads.task.freeze_backbone is False
    index = _json.loads((ws.shards / "index.json").read_text())["shards"]
    labelled = {e["file"] for e in index if e["split"] in ("train", "val")}
    _, cfg, _ = training.plan_stage("final", "demo", ws, splits=("train", "val"))
    assert {os.path.basename(f) for f in cfg.task.train_data.input_path} == labelled


def test_unreachable_pretrained_weights_fail_fast_with_the_way_out(base):
    from helpers.train import config

    ws = new_workspace(base, "pretrained")
    prof = config.get_profile("demo", pretrained="https://weights.invalid/resnet.tar.gz")
    t0 = time.time()
    with pytest.raises(training.PretrainedWeightsUnavailable, match="from_scratch=True"):
        training.resolve_pretrained(prof, ws, timeout_s=5)
    assert time.time() - t0 < 30
    with pytest.raises(training.PretrainedWeightsUnavailable):
        training.train_stage("heads", "demo", ws, pretrained="https://weights.invalid/r.tar.gz",
                             progress=False)
    assert not list((ws.checkpoints / "heads").glob("ckpt-*"))  # nothing trained on a surprise


def test_a_seed_fixes_the_starting_weights_and_is_part_of_the_stage(base, heads):
    """Profile.seed: the same seed starts from the same weights (how bench_quality runs a recipe
    twice), an unseeded stage from others, and the seed is in the stage's fingerprint."""
    starts, prints = {}, {}
    for name in ("seed7a", "seed7b"):
        ws = new_workspace(base, name)
        res = training.train_stage("heads", "demo", ws, stop_at_step=1, progress=False, seed=7)
        assert res.end_step == 1
        starts[name] = model_vars(ws.checkpoints / "heads" / "ckpt-0")
        prints[name] = json.loads((ws.checkpoints / "heads" / "stage.json").read_text())["fingerprint"]
    unseeded_dir = heads[0].checkpoints / "heads"
    unseeded = model_vars(unseeded_dir / "ckpt-0")
    heads_only = [k for k in starts["seed7a"] if not k.startswith("backbone/")]
    assert len(heads_only) > 20
    for k in heads_only:
        np.testing.assert_array_equal(starts["seed7a"][k], starts["seed7b"][k], err_msg=k)
    assert any(not np.array_equal(starts["seed7a"][k], unseeded[k]) for k in heads_only)
    assert prints["seed7a"] == prints["seed7b"]
    assert json.loads((unseeded_dir / "stage.json").read_text())["fingerprint"] != prints["seed7a"]


def test_a_56_pixel_mask_head_learns_56_pixel_targets_and_predicts_56_pixel_masks(base, heads):
    """Profile.mask_upsample=4 (a bench_quality lever): the mask head upsamples its 14x14 ROI
    features x4, trains on 56x56 targets, and prediction returns 56x56 masks per box; the
    default stays torchvision's 28x28."""
    from helpers.infer.model import load_model, predict_image

    ws = new_workspace(base, "mask56")
    res = training.train_stage("heads", "demo", ws, stop_at_step=5, progress=False,
                               mask_upsample=4, mask_crop_size=56)
    assert res.end_step == 5
    deconv = {k: v.shape for k, v in model_vars(res.checkpoint).items()
              if k.startswith("mask_head/") and len(v.shape) == 4}
    assert any(s[:2] == (4, 4) for s in deconv.values()), deconv  # a 4x4 stride-4 transposed conv
    image = np.random.default_rng(0).integers(0, 256, (200, 240, 3), dtype=np.uint8)
    for stage_ws, side in ((ws, 56), (heads[0], 28)):
        model, params = load_model(stage_ws, "heads", min_score=0.0, unfinished=True)  # stopped at step 5
        out = predict_image(model, params, image, score_threshold=0.0)
        assert len(out["scores"]) > 0 and out["masks"].shape[1:] == (side, side)
        assert tuple(out["image_shape"]) == (200, 240)


def _count_record_reads(monkeypatch) -> list[str]:
    """Every read of a stage.json from now on (Stage and read_record read it with Path.read_text)."""
    from pathlib import Path

    reads, read_text = [], Path.read_text

    def counting(self, *a, **kw):
        if self.name == "stage.json":
            reads.append(self.parent.name)
        return read_text(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", counting)
    return reads


def test_a_stage_record_is_read_once_per_train_stage_and_per_predict_stage(base, heads, monkeypatch):
    from helpers.infer.predict import image_ids_of, predict_stage
    from helpers.train import config

    ws = new_workspace(base, "reads", copy_from=heads[0].root)
    shutil.rmtree(ws.checkpoints / "all", ignore_errors=True)  # the shared workspace may hold one
    parses = []
    monkeypatch.setattr(config, "stage_kind", lambda s, f=config.stage_kind: parses.append(s) or f(s))
    reads = _count_record_reads(monkeypatch)
    training.train_stage("heads", "demo", ws, progress=False)  # finished: nothing to do
    assert sorted(reads) == ["heads"] and parses == ["heads"]
    reads.clear(), parses.clear()
    training.train_stage("all", "demo", ws, steps=3, stop_at_step=2, progress=False)  # fresh: its parent's record
    assert reads == ["heads"] and sorted(parses) == ["all", "heads"]
    reads.clear()
    assert training.train_stage("all", "demo", ws, progress=False).start_step == 2  # resumed
    assert sorted(reads) == ["all", "heads"]
    reads.clear()
    predict_stage(ws, "all", image_ids_of(ws, "val")[:2], tta=("hflip",), progress=False)
    assert reads == ["all"]


def test_a_torchvision_ops_stage_is_continued_and_predicted_with_them(base):
    """torchvision_ops (the torchvision starts' padding, anchors and ROIAlign,
    helpers/train/torchvision_ops.py): recorded by the stage, inherited by the stage that
    continues it though the profile's own are Model Garden's, and rebuilt for prediction by a
    process that never trained (the backbone builder is registered where models are built)."""
    from helpers.train.stages import Stage

    ws = new_workspace(base, "torchvision_ops")
    res = training.train_stage("heads", "demo", ws, steps=2, progress=False, torchvision_ops=True)
    assert res.finished
    stage = Stage.open(ws, "heads")
    record = stage.record
    assert record["torchvision_ops"] is True
    assert stage.pixel_size.um == 0.25 and "40x" in stage.pixel_size.source  # the demo data's, as the course's
    assert record["config"]["task"]["model"]["backbone"]["type"] == "resnet_torch"
    _, cfg, _ = training.plan_stage("all", "demo", ws, accelerator="cpu")
    assert cfg.task.model.backbone.type == "resnet_torch" and cfg.task.model.torchvision_ops
    child = run_child(
        "import numpy as np\n"
        "from helpers.infer.model import load_model, predict_image\n"
        f"model, params = load_model({str(ws.root)!r}, 'heads', min_score=0.0)\n"
        "print('BACKBONE', type(model.keras.backbone).__name__)\n"
        "print('MODEL', type(model.keras).__name__, type(model.keras.mask_roi_aligner).__name__)\n"
        "out = predict_image(model, params, np.full((130, 150, 3), 128, np.uint8), score_threshold=0.0)\n"
        "print('SHAPE', tuple(out['image_shape']))\n")
    out, _ = child.communicate(timeout=600)
    assert child.returncode == 0, out[-3000:]
    assert "BACKBONE TorchPaddedResNet" in out and "SHAPE (130, 150)" in out
    assert "MODEL TorchvisionMaskRCNNModel TorchvisionROIAligner" in out


def test_a_heads_stage_fine_tunes_another_workspaces_trained_stage(base, heads_and_all):
    """start_from: every weight of the trained stage's newest checkpoint is the new heads stage's
    start (the backbone, frozen in heads, stays exactly it), its knobs are inherited, and a stage
    that is no trained stage's folder is named."""
    from helpers.errors import InvalidRequest
    from helpers.train.stages import Stage, StageRecordError

    trained, _ = heads_and_all
    ws = new_workspace(base, "fine_tuned")
    res = training.train_stage("heads", "demo", ws, steps=2, progress=False, start_from=str(trained.checkpoints / "all"))
    assert res.finished
    source = model_vars(trained.checkpoints / "all" / "ckpt-10")
    start, end = model_vars(ws.checkpoints / "heads" / "ckpt-0"), backbone_vars(ws.checkpoints / "heads" / "ckpt-2")
    assert start.keys() == source.keys()
    for k in source:  # every weight, heads too: the trained model is the start
        np.testing.assert_array_equal(start[k], source[k], err_msg=k)
    for k in end:
        np.testing.assert_array_equal(end[k], source[k], err_msg=k)
    record = Stage.open(ws, "heads").record
    assert record["init_checkpoint"].endswith(os.path.join("all", "ckpt-10"))
    assert record["start_from"] == str(trained.checkpoints / "all")
    again = training.train_stage("heads", "demo", ws, steps=2, progress=False)  # a re-run need not repeat it
    assert again.status.startswith("skipped")
    with pytest.raises(InvalidRequest, match="was started from .* it cannot continue from"):
        training.train_stage("heads", "demo", ws, steps=2, progress=False, start_from=str(trained.checkpoints / "heads"))
    with pytest.raises(StageRecordError, match="holds no trained stage"):
        training.train_stage("heads", "demo", new_workspace(base, "fine_tuned_wrong"), steps=2, progress=False,
                             start_from=str(trained.checkpoints))
