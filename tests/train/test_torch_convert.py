"""torchvision's Mask R-CNN converted for Model Garden (helpers/train/torch_convert.py).

torchvision's maskrcnn_resnet50_fpn_v2 is built with random weights (weights=None, no network)
in a subprocess (tests/_torch_reference.py: torch never shares a process with TensorFlow),
with random batch-norm statistics and biases; its outputs on one image are compared with the
converted Model Garden model's on the same input:

* the FPN's five levels (the backbone padded as torch pads, helpers/train/torch_resnet.py);
* the RPN head's objectness and box deltas per anchor, on the same FPN features;
* the box head's class logits and deltas, and the mask head's logits, on the same ROI features.

Then Model Garden's own ResNet ('same' padding) and its ROIAlign are shown to compute other
functions, each comparison is shown to fail on a wrong mapping, and the whole model's inference
is compared with torchvision's, end to end: proposals before NMS, the box head's decoded boxes and
scores, the final detections and masks (each difference from torchvision's fails it).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.train import torch_convert as tc
from helpers.train.stages import Stage

REPO = Path(__file__).resolve().parents[2]
EXACT = 1e-4  # max |TF - torch| / max |torch|: float32 rounding only (measured: <= 3e-6)
LEVELS = "23456"
# per class, torch's (dx, dy, dw, dh) -> Model Garden's (dy, dx, dh, dw): written out, not the
# converter's own function, so that a wrong one there fails here
TORCH_TO_MG_DELTAS = [4 * c + j for c in range(91) for j in (1, 0, 3, 2)]
COCO_MODULES = ["backbone", "decoder", "rpn_head", "detection_head", "mask_head"]


def torch_available() -> str | None:
    """None when torch and torchvision import (in a process of their own), else why not."""
    proc = subprocess.run([sys.executable, "-c", "import torch, torchvision"], capture_output=True, text=True)
    return None if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["?"])[-1]


def require_torch():
    why = torch_available()
    if why:
        msg = f"torch/torchvision not importable ({why}); bin/test installs requirements-torch.txt"
        if os.environ.get("NUCLEI_REQUIRE_TORCH"):
            pytest.fail(msg + "; NUCLEI_REQUIRE_TORCH is set, so this is an error")
        pytest.skip(msg)


def rel(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """torchvision's side: state dict and outputs (see tests/_torch_reference.py)."""
    require_torch()
    out = tmp_path_factory.mktemp("torch") / "ref.npz"
    subprocess.run([sys.executable, str(REPO / "tests" / "_torch_reference.py"), str(out)], check=True,
                   capture_output=True)
    with np.load(out) as data:
        ref = dict(data)
    ref["state_dict"] = {k[3:]: ref.pop(k) for k in list(ref) if k.startswith("sd/")}
    return ref


def model_config(num_classes=91, coco_anchors=True, **knobs):
    """The colab profile's model (COCO's architecture), at a small input; with COCO's 91
    classes and torchvision's anchors (32-512 px, one scale) the predictors map too."""
    from helpers.train.config import get_profile
    from helpers.train.configs.nuclei_maskrcnn import experiment_config

    # torchvision's inference settings: the RPN keeps 1000 proposals of the best 1000 anchors
    # a level, 100 detections (its NMS thresholds, 0.7 and 0.5, and score floor 0.05 are ours too)
    knobs = {"max_num_detections": 100, "test_num_proposals": 1000, "test_pre_nms_top_k": 1000, **knobs}
    cfg = experiment_config(get_profile("colab", crop_size=128, predict_size=128, **knobs), "heads", ["x"],
                            accelerator="cpu")
    over = {"num_classes": num_classes}
    if coco_anchors:
        over["anchor"] = {"anchor_size": 8.0, "num_scales": 1}
    cfg.override({"task": {"model": over}}, is_strict=True)
    return cfg


@pytest.fixture(scope="module")
def converted(reference):
    """A Model Garden model of COCO's shape with torchvision's weights mapped in."""
    from helpers.train.tasks.nuclei_maskrcnn import NucleiMaskRCNNTask

    cfg = model_config()
    model = NucleiMaskRCNNTask(cfg.task).build_model()
    report = tc.map_maskrcnn(reference["state_dict"], model, cfg.task.model)
    return model, cfg, report


def fpn_errors(model, ref, key="fpn") -> dict:
    out = model.decoder(model.backbone(ref["x"], training=False), training=False)
    return {lvl: rel(out[lvl], ref[f"{key}/{lvl}"]) for lvl in LEVELS}


def torch_fpn(ref) -> dict:
    import tensorflow as tf

    return {lvl: tf.constant(ref[f"fpn/{lvl}"]) for lvl in LEVELS}


def rpn_errors(model, ref) -> dict:
    """Objectness and deltas per anchor. MG's anchor a (aspect ratio w/h 0.5, 1, 2) is torch's
    anchor 2 - a (h/w 0.5, 1, 2); deltas (dy, dx, dh, dw) are torch's (dx, dy, dw, dh)."""
    scores, boxes = model.rpn_head(torch_fpn(ref))
    order = [2, 1, 0]
    rows = [4 * o + j for o in order for j in (1, 0, 3, 2)]
    errs = {}
    for lvl in LEVELS:
        errs[f"scores{lvl}"] = rel(scores[lvl], np.transpose(ref[f"rpn_scores/{lvl}"], (0, 2, 3, 1))[..., order])
        errs[f"deltas{lvl}"] = rel(boxes[lvl], np.transpose(ref[f"rpn_deltas/{lvl}"], (0, 2, 3, 1))[..., rows])
    return errs


def head_errors(model, ref) -> dict:
    import tensorflow as tf

    cls, deltas = model.detection_head[0](tf.constant(ref["box_feats"])[None], training=False)
    classes = np.arange(len(ref["rois"])) % 91
    masks = model.mask_head([tf.constant(ref["mask_feats"])[None], tf.constant(classes[None])], training=False)
    return {"box classes": rel(cls[0], ref["box_cls"]),
            "box deltas": rel(deltas[0], ref["box_deltas"][:, TORCH_TO_MG_DELTAS]),
            "mask logits": rel(masks[0], ref["mask_logits"][np.arange(len(classes)), classes])}


def test_converted_model_computes_torchvisions_outputs(converted, reference):
    model, _, report = converted
    errors = {**{f"fpn P{k}": v for k, v in fpn_errors(model, reference).items()},
              **rpn_errors(model, reference), **head_errors(model, reference)}
    print("relative errors:", {k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) < EXACT, errors
    # everything of torchvision's was used, nothing re-initialised (COCO's classes and anchors)
    assert report.unused == [] and report.reinitialised == []
    assert len(report.folded) == 4  # the FPN's four laterals
    assert "coarser_6" in report.added


def test_model_gardens_own_resnet_pads_otherwise(converted, reference):
    """The same weights in Model Garden's own ResNet ('same' padding: bottom/right on even sizes)
    compute what torch computes when given TensorFlow's padding, and not torchvision's own
    function: the FPN is off by tens of percent, which is why the torchvision starts use
    ``resnet_torch``."""
    from helpers.train.tasks.nuclei_maskrcnn import NucleiMaskRCNNTask

    model, cfg, _ = converted
    assert cfg.task.model.backbone.type == "resnet_torch"
    same = model_config(torchvision_ops=False)
    assert same.task.model.backbone.type == "resnet"
    tf_padded = NucleiMaskRCNNTask(same.task).build_model()
    tc.map_maskrcnn(reference["state_dict"], tf_padded, same.task.model)
    as_tf, as_torch = fpn_errors(tf_padded, reference, key="fpn_tf"), fpn_errors(tf_padded, reference)
    print("Model Garden's ResNet, FPN against torch's padding:", {k: f"{v:.2f}" for k, v in as_torch.items()})
    assert max(as_tf.values()) < EXACT, as_tf
    assert min(as_torch.values()) > 0.1, as_torch


def test_roialign_is_torchvisions_and_model_gardens_is_not(converted, reference):
    """The converted model's ROIAlign (helpers/train/torchvision_ops.py) is torchvision's (2x2
    samples a bin, aligned=False, P2-P5); Model Garden's own (one sample at each bin's centre)
    differs by a few percent: not float noise, not another function either."""
    import tensorflow as tf
    from official.vision.modeling.layers import roi_aligner

    model, _, _ = converted
    feats, rois = torch_fpn(reference), tf.constant(yxyx(reference["rois"])[None])
    ours = {"box 7x7": rel(model.roi_aligner(feats, rois)[0], reference["box_feats"]),
            "mask 14x14": rel(model.mask_roi_aligner(feats, rois)[0], reference["mask_feats"])}
    theirs = {"box 7x7": rel(roi_aligner.MultilevelROIAligner(7)(feats, rois)[0], reference["box_feats"]),
              "mask 14x14": rel(roi_aligner.MultilevelROIAligner(14)(feats, rois)[0], reference["mask_feats"])}
    print("ROIAlign, ours:", ours, "Model Garden's:", theirs)
    assert max(ours.values()) < EXACT, ours
    for err in theirs.values():
        assert 100 * EXACT < err < 1.0


# ----------------------------------------------------------------------------- end to end
# Tolerances of the end-to-end comparison: float32 rounding of the same function, ~10x the largest
# error measured. The FPN agrees to ~3e-6 of its range; decoded through exponentiated deltas that
# is 7e-4 px on proposals before NMS (up to ~600 px wide at P6, unclipped), 3e-4 px on the box
# head's and the detections' boxes, 4e-6 of the objectness logits' range, 7e-6 on scores and
# 3e-5 on mask probabilities. Each mutation below moves something by pixels or percent.
E2E_TOLERANCE = {"proposals before NMS (px)": 1e-2, "objectness": 5e-5, "box head boxes (px)": 5e-3,
                 "box head scores": 1e-4, "detection boxes (px)": 5e-3, "detection scores": 1e-4,
                 "detection masks": 5e-4}


def yxyx(boxes) -> np.ndarray:
    """torchvision's (x1, y1, x2, y2) as Model Garden's (y1, x1, y2, x2), along the last axis."""
    return np.asarray(boxes)[..., [1, 0, 3, 2]]


def absmax(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")


def in_model_garden_order(per_anchor: np.ndarray, side: int) -> np.ndarray:
    """torchvision's rows of every anchor (levels 2-6, each (y, x, anchor of h/w 0.5, 1, 2)) in
    Model Garden's order (the same, anchors of w/h 0.5, 1, 2: torchvision's 2, 1, 0)."""
    out, start = [], 0
    for lvl in LEVELS:
        n = (side >> int(lvl)) ** 2 * 3
        block = per_anchor[start:start + n]
        out.append(block.reshape(-1, 3, *block.shape[1:])[:, [2, 1, 0]].reshape(block.shape))
        start += n
    assert start == len(per_anchor)
    return np.concatenate(out)


def end_to_end_errors(model, ref) -> dict:
    """The converted model in inference on torchvision's image, against torchvision's: every
    anchor's proposal before NMS (decoded as Model Garden's ROI generator decodes it), the box
    head's decoded boxes and scores on torchvision's proposals after NMS, and the final
    detections (boxes, scores, classes, masks) of Model Garden's own inference call."""
    import tensorflow as tf
    from official.vision.modeling.layers import detection_generator
    from official.vision.ops import box_ops

    from helpers.train import torchvision_ops

    side = ref["x"].shape[1]
    image_shape = tf.constant([[side, side]], tf.float32)
    out = model(tf.constant(ref["x"]), image_shape=image_shape, training=False)
    anchors = torchvision_ops.torchvision_anchors(model.get_config(), (side, side))
    proposals = np.concatenate([box_ops.decode_boxes(tf.reshape(out["rpn_boxes"][lvl], [-1, 4]),
                                                     tf.reshape(anchors[lvl], [-1, 4])) for lvl in LEVELS])
    objectness = np.concatenate([tf.reshape(out["rpn_scores"][lvl], [-1]) for lvl in LEVELS])
    errors = {"proposals before NMS (px)": absmax(proposals, yxyx(in_model_garden_order(ref["e2e/proposals"], side))),
              "objectness": rel(objectness, in_model_garden_order(ref["e2e/objectness"], side))}

    rois = tf.constant(yxyx(ref["e2e/rois"])[None])
    logits, deltas = model.detection_head[0](model.roi_aligner(out["decoder_features"], rois), training=False)
    decode = detection_generator.DetectionGenerator.from_config(
        {**model.detection_generator.get_config(), "apply_nms": False})
    decoded = decode(deltas, logits, rois, image_shape, model._cascade_layer_to_weights[0])  # Model Garden's weights
    errors["box head boxes (px)"] = absmax(decoded["decoded_boxes"][0], yxyx(ref["e2e/box_boxes"]))
    errors["box head scores"] = absmax(decoded["decoded_box_scores"][0], ref["e2e/box_scores"])

    n = int(out["num_detections"][0])
    same = n == len(ref["e2e/det_labels"]) and (out["detection_classes"][0, :n].numpy() == ref["e2e/det_labels"]).all()
    errors["detection boxes (px)"] = absmax(out["detection_boxes"][0, :n], yxyx(ref["e2e/det_boxes"])) if same else np.inf
    errors["detection scores"] = absmax(out["detection_scores"][0, :n], ref["e2e/det_scores"]) if same else np.inf
    errors["detection masks"] = absmax(out["detection_masks"][0, :n], ref["e2e/det_masks"]) if same else np.inf
    return errors


def beyond_tolerance(errors: dict) -> dict:
    return {k: v for k, v in errors.items() if not v <= E2E_TOLERANCE[k]}


def test_the_converted_model_infers_what_torchvisions_infers(converted, reference):
    """COCO's 91 classes kept, random weights and BN statistics: the same proposals before NMS,
    the same decoded boxes and scores of the box head, the same 100 detections and masks."""
    model, _, _ = converted
    errors = end_to_end_errors(model, reference)
    print("end to end:", {k: f"{v:.1e}" for k, v in errors.items()})
    assert len(reference["e2e/det_labels"]) == 100 and len(set(reference["e2e/det_labels"])) > 1
    assert beyond_tolerance(errors) == {}, errors


def test_anchors_of_our_own_sizes_are_torchvisions(reference):
    """The colab profile's anchors (3 x stride, two sizes a level, not whole pixels) as
    torchvision's AnchorGenerator makes them: centres on k x stride, rounded base anchors."""
    from helpers.train import torchvision_ops

    side = reference["x"].shape[1]
    ours = torchvision_ops.anchor_boxes((side, side), 2, 6, num_scales=2, aspect_ratios=(0.5, 1.0, 2.0),
                                        anchor_size=3.0)
    want, start = [], 0  # torchvision: (y, x, ratio h/w 0.5/1/2, size); ours: (y, x, size, ratio w/h 0.5/1/2)
    for lvl in LEVELS:
        n = (side >> int(lvl)) ** 2 * 6
        block = reference["nuclei_anchors"][start:start + n].reshape(-1, 3, 2, 4)
        want.append(block[:, ::-1].transpose(0, 2, 1, 3).reshape(-1, 4))
        start += n
    got = np.concatenate([ours[lvl].numpy().reshape(-1, 4) for lvl in LEVELS])
    np.testing.assert_array_equal(got, yxyx(np.concatenate(want)))


def test_each_difference_from_torchvision_fails_the_end_to_end_comparison(converted, reference, monkeypatch):
    """Model Garden's padding, its anchor centres ((k + 1/2) x stride) or ROIAlign, box-coder
    weights of (1, 1, 1, 1), or box deltas in torchvision's (dx, dy, dw, dh) order."""
    import tf_keras
    from official.vision.modeling.layers import roi_aligner
    from official.vision.ops import anchor as mg_anchor

    from helpers.train import torch_resnet, torchvision_ops

    model, cfg, _ = converted
    sd = reference["state_dict"]

    def model_gardens_anchors(image_size, min_level, max_level, num_scales, aspect_ratios, anchor_size):
        return mg_anchor.Anchor(min_level, max_level, num_scales, aspect_ratios, anchor_size, image_size).multilevel_boxes

    def delta_order():
        monkeypatch.setattr(tc, "box_delta_rows", lambda n: np.arange(n))
        tc.map_maskrcnn(sd, model, cfg.task.model)

    mutations = {
        "Model Garden's padding": lambda: monkeypatch.setattr(torch_resnet.TorchPaddedConv2D, "convolution_op",
                                                              tf_keras.layers.Conv2D.convolution_op),
        "anchor centres half a stride off": lambda: monkeypatch.setattr(torchvision_ops, "anchor_boxes",
                                                                        model_gardens_anchors),
        "Model Garden's ROIAlign": lambda: monkeypatch.setattr(model, "roi_aligner",
                                                               roi_aligner.MultilevelROIAligner(7)),
        "box-coder weights (1, 1, 1, 1)": lambda: monkeypatch.setattr(model, "_cascade_layer_to_weights",
                                                                      [[1.0, 1.0, 1.0, 1.0]] * 3),
        "deltas (dx, dy, dw, dh)": delta_order,
    }
    failed = {}
    try:
        for name, mutate in mutations.items():
            mutate()
            failed[name] = beyond_tolerance(end_to_end_errors(model, reference))
            monkeypatch.undo()
    finally:
        monkeypatch.undo()
        tc.map_maskrcnn(sd, model, cfg.task.model)
    print("beyond tolerance:", {k: sorted(v) for k, v in failed.items()})
    assert all(failed.values()), failed
    assert "proposals before NMS (px)" in failed["anchor centres half a stride off"]
    assert "proposals before NMS (px)" in failed["deltas (dx, dy, dw, dh)"]
    assert "box head boxes (px)" in failed["box-coder weights (1, 1, 1, 1)"]
    assert "box head scores" in failed["Model Garden's ROIAlign"]
    assert "objectness" in failed["Model Garden's padding"]


def test_a_wrong_mapping_fails_the_comparison(converted, reference, monkeypatch):
    model, cfg, _ = converted
    sd = reference["state_dict"]
    try:
        # two FPN levels swapped (same shapes): P3 and P4 no longer match
        swapped = dict(sd)
        for suffix in ("0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
            a, b = f"backbone.fpn.layer_blocks.1.{suffix}", f"backbone.fpn.layer_blocks.2.{suffix}"
            swapped[a], swapped[b] = sd[b], sd[a]
        tc.map_maskrcnn(swapped, model, cfg.task.model)
        errs = fpn_errors(model, reference)
        assert errs["3"] > 100 * EXACT and errs["4"] > 100 * EXACT and errs["2"] < EXACT
        # a kernel transpose skipped (kh and kw swapped: shapes still fit)
        monkeypatch.setattr(tc, "conv_kernel", lambda w: np.transpose(w, (3, 2, 1, 0)))
        tc.map_maskrcnn(sd, model, cfg.task.model)
        assert min(fpn_errors(model, reference).values()) > 100 * EXACT
        monkeypatch.undo()
        # the box head's fc flattened in torch's (C, H, W) order
        monkeypatch.setattr(tc, "roi_fc_kernel", lambda w, channels: w.T)
        tc.map_maskrcnn(sd, model, cfg.task.model)
        assert head_errors(model, reference)["box classes"] > 100 * EXACT
        monkeypatch.undo()
        # box deltas left in torch's (dx, dy, dw, dh) order
        monkeypatch.setattr(tc, "box_delta_rows", lambda n: np.arange(n))
        tc.map_maskrcnn(sd, model, cfg.task.model)
        assert head_errors(model, reference)["box deltas"] > 100 * EXACT
        monkeypatch.undo()
        # levels whose shapes differ cannot be swapped silently
        bad = dict(sd)
        bad["backbone.fpn.inner_blocks.1.0.weight"], bad["backbone.fpn.inner_blocks.2.0.weight"] = \
            sd["backbone.fpn.inner_blocks.2.0.weight"], sd["backbone.fpn.inner_blocks.1.0.weight"]
        with pytest.raises(tc.ConversionError, match="lateral_3"):
            tc.map_maskrcnn(bad, model, cfg.task.model)
    finally:
        monkeypatch.undo()
        tc.map_maskrcnn(sd, model, cfg.task.model)  # the module's model stays the right one


def test_our_classes_and_anchors_are_reinitialised_and_named(converted, reference):
    model, _, _ = converted
    nuclei = model_config(num_classes=2, coco_anchors=False)
    report = tc.map_maskrcnn(reference["state_dict"], model, nuclei.task.model)
    reinit = dict(report.reinitialised)
    assert set(reinit) == {"rpn-scores", "rpn-boxes", "detection-scores", "detection-boxes", "mask-logits"}
    assert "anchors differ" in reinit["rpn-scores"] and "2 classes here, 91" in reinit["mask-logits"]
    assert report.unused == sorted(f"{k}.{p}" for k in (
        "rpn.head.cls_logits", "rpn.head.bbox_pred", "roi_heads.box_predictor.cls_score",
        "roi_heads.box_predictor.bbox_pred", "roi_heads.mask_predictor.mask_fcn_logits") for p in ("weight", "bias"))
    assert "re-initialised: mask-logits" in report.summary()
    tc.map_maskrcnn(reference["state_dict"], model, model_config().task.model)


def test_epsilon_and_layout_mismatches_are_refused(converted, reference):
    import tf_keras

    norm = tf_keras.layers.BatchNormalization(epsilon=1e-3)
    norm.build([None, 4])
    with pytest.raises(tc.ConversionError, match="epsilon 0.001 but torchvision's is 1e-05"):
        tc._set_bn(norm, [np.ones(4)] * 4, tc.Report(), "bn")
    model, cfg, _ = converted
    one_conv = {k: v for k, v in reference["state_dict"].items() if not k.startswith("rpn.head.conv.1.")}
    with pytest.raises(tc.ConversionError, match="set rpn_convs=1"):
        tc.map_rpn(model.rpn_head, tc._Source(one_conv, prefix="rpn.head."), tc.Report(), cfg.task.model.anchor)


def test_checkpoint_round_trip_checks_the_architecture_first(converted, tmp_path):
    model, cfg, _ = converted
    arch = tc.weight_architecture(cfg.task.model)
    prefix = tc.write_converted(tmp_path / "coco", tc.transferable_items(model),
                                {"source": "test", "modules": COCO_MODULES, "architecture": arch})
    assert {"conversion.json", "model.index", "model.data-00000-of-00001"} <= {p.name for p in (tmp_path / "coco").iterdir()}
    assert not list(tmp_path.glob(".*"))  # no temp folder left
    lateral = model.decoder.get_layer("lateral_2")
    det_fc = model.detection_head[0]._fcs[0]
    want = [lateral.kernel.numpy(), det_fc.kernel.numpy()]
    lateral.kernel.assign(np.zeros_like(want[0]))
    det_fc.kernel.assign(np.zeros_like(want[1]))
    # another architecture: refused before anything is loaded
    other = model_config(max_level=5)
    with pytest.raises(tc.ConversionError, match=r"max_level 6 there, 5 here"):
        tc.restore_transferable(model, prefix, COCO_MODULES, other.task.model)
    assert not lateral.kernel.numpy().any()
    tc.restore_transferable(model, prefix, COCO_MODULES, cfg.task.model)
    np.testing.assert_array_equal(lateral.kernel.numpy(), want[0])
    np.testing.assert_array_equal(det_fc.kernel.numpy(), want[1])


def _offline() -> bool:
    try:
        socket.create_connection(("download.pytorch.org", 443), timeout=3).close()
        return False
    except OSError:
        return True


def test_a_start_that_cannot_be_had_says_what_to_do(tmp_path, monkeypatch):
    """No torch, no network, a damaged download: one clear message each, nothing half-written."""
    cfg = model_config(num_classes=2, coco_anchors=False)
    root = tmp_path / "ws"
    fake = tmp_path / "no_torch"
    fake.mkdir()
    (fake / "torch.py").write_text("raise ImportError('No module named torch')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake))
    with pytest.raises(tc.PretrainedWeightsUnavailable, match="needs torch and torchvision"):
        tc.resolve_start(root, "coco", cfg.task.model, COCO_MODULES)
    monkeypatch.delenv("PYTHONPATH")
    if torch_available() is not None or not _offline():
        pytest.skip("the no-network checks need torch and no route to torchvision's server")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(tc.PretrainedWeightsUnavailable, match="no network to torchvision's server"):
        tc.resolve_start(root, "coco", cfg.task.model, COCO_MODULES)
    # a damaged cached download is removed (then, offline, the new download fails)
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a torch file")
    with pytest.raises(tc.PretrainedWeightsUnavailable):
        tc.resolve_start(root, "coco", cfg.task.model, COCO_MODULES)
    assert not cached.exists()
    leftovers = list((root / "pretrained").iterdir()) if (root / "pretrained").exists() else []
    assert leftovers == []  # no .npz, no half-converted folder


def test_colab_heads_stage_starts_from_the_converted_coco_weights(converted, base):
    """train_stage("heads", "colab") with the coco start (the profile's default) reads a
    conversion from the workspace cache: its starting checkpoint holds the converted weights,
    the frozen backbone and the identity norms stay as converted, the heads train."""
    import tensorflow as tf
    from _training_support import new_workspace

    from helpers.train import training

    ws = new_workspace(base, "coco_start")
    # smaller crops, batch and samples than on Colab: no weight changes shape, the steps are quick
    knobs = dict(crop_size=128, predict_size=128, images_per_batch=1, num_proposals=256, num_sampled_rois=64,
                 num_sampled_masks=32, rpn_batch_size_per_im=128, max_num_instances=200)
    _, cfg, sdir = training.plan_stage("heads", "colab", ws, steps=2, accelerator="cpu", **knobs)
    modules = cfg.task.init_checkpoint_modules
    assert modules == COCO_MODULES
    folder = tc.cache_folder(ws.root, "coco", cfg.task.model, modules)
    # what resolve_start caches after torchvision's download: the module's converted model
    # (its 91-class predictors are not among the transferable items)
    tc.write_converted(folder, tc.transferable_items(converted[0]), {
        "source": "random v2 (test)", "modules": modules, "architecture": tc.weight_architecture(cfg.task.model)})
    res = training.train_stage("heads", "colab", ws, steps=2, progress=False, **knobs)
    assert res.finished and res.end_step == 2
    info = Stage.open(ws, "heads").record
    assert info["pretrained"] == "coco" and info["init_checkpoint"] == str(folder / tc.CHECKPOINT_NAME)
    start, end, conv = (tf.train.load_checkpoint(str(p)) for p in
                        (sdir / "ckpt-0", res.checkpoint, folder / tc.CHECKPOINT_NAME))

    def values(reader, part):
        return {k.split(part, 1)[1]: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
                if part in k and "OPTIMIZER_SLOT" not in k}

    for part in ("backbone/", "decoder/"):
        converted, started, ended = values(conv, part), values(start, part), values(end, part)
        assert converted and converted.keys() <= started.keys()
        for k, v in converted.items():
            np.testing.assert_array_equal(started[k], v, err_msg=k)
        if part == "backbone/":  # frozen in the heads stage, batch norm statistics included
            for k, v in converted.items():
                np.testing.assert_array_equal(ended[k], v, err_msg=k)
    assert_identity_norms(end)
    # the all stage trains the backbone, but not its batch norms (freeze_backbone_norm), nor the identities
    res = training.train_stage("all", "colab", ws, steps=2, progress=False, **knobs)
    assert res.finished
    after = tf.train.load_checkpoint(str(res.checkpoint))
    assert_identity_norms(after)
    norms = {k: v for k, v in values(conv, "backbone/").items() if re.search(r"(gamma|beta|moving_\w+)/", k)}
    assert len(norms) == 4 * 53  # ResNet-50's 53 batch norms
    moved = values(after, "backbone/")
    for k, v in norms.items():
        np.testing.assert_array_equal(moved[k], v, err_msg=k)
    assert any((moved[k] != v).any() for k, v in values(conv, "backbone/").items() if k not in norms)


# The norms Model Garden has where torchvision has none, by the attribute that holds them: after
# each RPN conv (a list per level), after the box head's fc, after the mask head's deconv
IDENTITY_NORMS = re.compile(r"(rpn_head/_norms/\d+/\d+|detection_head/\d+/_fc_norms/\d+|mask_head/_deconv_bn)/"
                            r"(gamma|beta|moving_mean|moving_variance)/")
IDENTITY = {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0 - 1e-5}


def assert_identity_norms(reader):
    """Every added norm of a checkpoint is still the identity it was converted as."""
    found = {}
    for k in reader.get_variable_to_shape_map():
        m = IDENTITY_NORMS.search(k)
        if m and "OPTIMIZER_SLOT" not in k:
            found.setdefault(m.group(1).split("/")[0], []).append(k)
            np.testing.assert_allclose(reader.get_tensor(k), IDENTITY[m.group(2)], rtol=0, atol=1e-7, err_msg=k)
    # the RPN's 2 convs on 5 levels, the box head's fc, the mask deconv: 4 variables each
    assert {part: len(keys) for part, keys in found.items()} == {"rpn_head": 40, "detection_head": 4, "mask_head": 4}


SMALL = dict(max_level=6, norm_epsilon=1e-5, identity_norms=True, torchvision_ops=True, rpn_convs=1, head_convs=0,
             head_fcs=1, head_fc_dims=64, mask_convs=1, mask_filters=32, fpn_filters=32, rpn_filters=32)


def test_a_converted_trained_model_fine_tunes_better_than_a_random_start(base):
    """torchvision's Mask R-CNN pieces at the demo profile's size, trained a little on the demo
    data in torch (tests/_torch_pretrain.py), converted by :func:`convert`, then the heads
    stage fine-tuned from it and from random weights, same seed and steps: the converted
    start's losses end lower, so what torch learnt survives the conversion."""
    import tensorflow as tf
    from _training_support import demo_dataset, new_workspace

    from helpers.train import curves, training

    require_torch()
    npz = base / "small_torch.npz"
    subprocess.run([sys.executable, str(REPO / "tests" / "_torch_pretrain.py"), str(demo_dataset(base)), str(npz),
                    "--steps", "200"], check=True, capture_output=True)
    ws = {name: new_workspace(base, f"finetune_{name}") for name in ("converted", "random")}
    _, cfg, _ = training.plan_stage("heads", "demo", ws["converted"], accelerator="cpu", init_modules=COCO_MODULES,
                                    **SMALL)
    folder = ws["converted"].root / "pretrained" / "small"
    with np.load(npz) as data:
        report = tc.convert(dict(data), cfg.task.model, COCO_MODULES, folder, source="tests/_torch_pretrain.py")
    assert {name for name, _ in report.reinitialised} == {"rpn-scores", "rpn-boxes"}  # our anchors, not its
    assert "block_group" not in " ".join(report.unused)
    assert (folder / tc.CONVERSION_FILE).is_file()
    losses = {}
    for name, start in (("converted", dict(init_checkpoint=str(folder),
                                           init_modules=COCO_MODULES)), ("random", {})):
        tf.keras.utils.set_random_seed(0)
        training.train_stage("heads", "demo", ws[name], steps=30, progress=False, **start, **SMALL)
        losses[name] = curves.read_curves(ws[name], "heads")["total_loss"][1]
    tail = {name: float(np.mean(v[-10:])) for name, v in losses.items()}
    # the backbone alone, as the imagenet-torchvision start converts a torchvision ResNet
    resnet = {k[len("backbone.body."):]: v for k, v in np.load(npz).items() if k.startswith("backbone.body.")}
    only = tc.convert(resnet, cfg.task.model, ["backbone"], ws["random"].root / "resnet", source="ResNet-18")
    assert only.unused == [] and only.reinitialised == []
    record = tc.read_conversion(ws["random"].root / "resnet" / tc.CHECKPOINT_NAME)
    assert set(record["architecture"]) == {"backbone", "norm_epsilon"} and record["modules"] == ["backbone"]
    reader = tf.train.load_checkpoint(str(ws["random"].root / "resnet" / tc.CHECKPOINT_NAME))
    stem = [k for k in reader.get_variable_to_shape_map() if reader.get_variable_to_shape_map()[k] == [7, 7, 3, 64]]
    np.testing.assert_array_equal(reader.get_tensor(stem[0]), np.transpose(resnet["conv1.weight"], (2, 3, 1, 0)))
    # measured: converted 1.59, random 2.30 (with Model Garden's padding, anchors and ROIAlign in
    # place of torchvision's: 1.72-1.80 against 2.07-2.28)
    print("mean total loss, steps 21-30:", tail)
    assert tail["converted"] < 0.85 * tail["random"], tail


def test_a_damaged_cached_conversion_is_deleted_and_converted_again(converted, tmp_path, monkeypatch):
    """A cut copy of the converted weights (Drive) is never read: it is deleted, each file
    emptied first (Drive's Trash keeps nothing of it), with what killed runs left beside it, and
    the start is converted again (here, offline, that fails with the no-network message)."""
    if torch_available() is not None or not _offline():
        pytest.skip("needs torch and no route to torchvision's server")
    model, _, _ = converted
    cfg = model_config(num_classes=2, coco_anchors=False)
    root = tmp_path / "ws"
    folder = tc.cache_folder(root, "coco", cfg.task.model, COCO_MODULES)
    tc.write_converted(folder, tc.transferable_items(model), {
        "source": "test", "modules": COCO_MODULES, "architecture": tc.weight_architecture(cfg.task.model)})
    assert tc.resolve_start(root, "coco", cfg.task.model, COCO_MODULES) == str(folder / tc.CHECKPOINT_NAME)
    data = folder / "model.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    trash = os.open(data, os.O_RDONLY)  # an open descriptor stands for Drive's Trash: what it keeps
    leftovers = [folder.with_name(f".{folder.name}.converting"), folder.with_name(f".{folder.name}.npz"),
                 folder.with_name(f"{folder.name}.damaged-1765000000")]
    leftovers[0].mkdir()
    (leftovers[0] / "model.index").write_bytes(b"x" * 1000)
    leftovers[1].write_bytes(b"x" * 1000)
    shutil.copytree(folder, leftovers[2])
    other = root / "pretrained" / "torchvision-ResNet50_Weights-IMAGENET1K_V2-12345678"
    other.mkdir()  # another start's conversion: not this one's to delete
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(tc.PretrainedWeightsUnavailable, match="no network"):
        tc.resolve_start(root, "coco", cfg.task.model, COCO_MODULES)
    assert sorted(p.name for p in (root / "pretrained").iterdir()) == [other.name]
    assert os.fstat(trash).st_size == 0  # emptied before it was deleted: nothing of it in the Trash
    os.close(trash)


def test_a_file_with_older_key_names_is_exported_as_torchvision_loads_it(converted, reference, tmp_path):
    """The export loads the file into torchvision's model, so torchvision's own hooks rename the
    keys of files saved by older versions: the converter then finds every key. Read raw, the same
    file does not convert. A file of another model is named as such."""
    model, cfg, _ = converted
    subprocess.run([sys.executable, str(REPO / "tests" / "_torch_old_file.py"), str(tmp_path)], check=True,
                   capture_output=True)
    name = tc.TORCHVISION_WEIGHTS["coco"][50]
    out = tmp_path / "exported.npz"
    proc = subprocess.run([sys.executable, "-m", "helpers.train.torch_export", name, str(out), "--file",
                           str(tmp_path / "old.pth")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with np.load(out) as got, np.load(tmp_path / "new.npz") as want, np.load(tmp_path / "old.npz") as old:
        exported, new, raw = dict(got), dict(want), dict(old)
    assert set(raw) != set(new) and set(exported) == set(new)
    for k, v in new.items():
        np.testing.assert_array_equal(exported[k], v, err_msg=k)
    with pytest.raises(tc.ConversionError, match="inner_blocks.0.0.weight"):
        tc.map_maskrcnn(raw, model, cfg.task.model)
    try:
        report = tc.map_maskrcnn(exported, model, cfg.task.model)
    finally:
        tc.map_maskrcnn(reference["state_dict"], model, cfg.task.model)  # the module's model stays the right one
    assert report.unused == [] and report.reinitialised == []
    resnet = subprocess.run([sys.executable, "-m", "helpers.train.torch_export", "ResNet50_Weights.IMAGENET1K_V2",
                             str(tmp_path / "r.npz"), "--file", str(tmp_path / "old.pth")], cwd=REPO,
                            capture_output=True, text=True)
    from helpers.train import torch_export

    assert resnet.returncode == torch_export.MISFIT and "does not fit torchvision's resnet50" in resnet.stdout
