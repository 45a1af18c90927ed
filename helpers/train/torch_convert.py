"""torchvision's Mask R-CNN and ResNet weights, converted to a checkpoint our Model Garden task reads.

Model Garden publishes no COCO Mask R-CNN checkpoint for TF2; torchvision's
``maskrcnn_resnet50_fpn_v2`` (COCO mask AP 41.8) has nearly Model Garden's layout, and every
Colab runtime has torch and torchvision. :func:`map_maskrcnn` writes a torchvision
``state_dict`` into a Model Garden ``MaskRCNNModel`` built with the architecture the weights
fit (``config.COCO_ARCHITECTURE``):

=========================================  ==============================================
torchvision                                Model Garden
=========================================  ==============================================
``backbone.body`` conv1/bn1, layer1-4      ResNet stem, ``block_group_l2-5`` (1x1, 3x3 with
                                           the stride, 1x1; projection shortcut)
``backbone.fpn.inner_blocks.k`` conv + BN  ``lateral_{k+2}`` (BN folded into kernel + bias)
``backbone.fpn.layer_blocks.k`` conv + BN  ``post_hoc_{k+2}`` + ``norm_{k+2}``
P6 = max_pool(P5, 1, stride 2)             ``coarser_6``: a 3x3/2 conv that picks the top-left
                                           tap (exactly P5[::2, ::2]), ``norm_6`` = ``norm_5``
``rpn.head.conv.i`` (bias, no norm)        ``rpn-conv_i`` + identity ``rpn-conv-norm``
``rpn.head.cls_logits/bbox_pred``          ``rpn-scores/boxes`` when the anchors agree
``roi_heads.box_head`` 4 x conv + BN, fc   ``detection-conv_i/-bn_i``, ``detection-fc_0``
                                           (rows reordered: torch flattens C,H,W; TF H,W,C)
                                           + identity ``detection-fc-bn_0``
``roi_heads.box_predictor``                ``detection-scores/boxes`` when the classes agree
``roi_heads.mask_head`` 4 x conv + BN      ``mask-conv_i/-bn_i``
``mask_predictor.conv5_mask``              ``mask-upsampling`` + identity ``mask-deconv-bn``
``mask_predictor.mask_fcn_logits``         ``mask-logits`` when the classes agree
=========================================  ==============================================

Kernels go from torch's ``[out, in, kh, kw]`` to TF's ``[kh, kw, in, out]`` (a transposed
conv's ``[in, out, kh, kw]`` to ``[kh, kw, out, in]``), dense ones are transposed, box deltas
go from torch's ``(dx, dy, dw, dh)`` to Model Garden's ``(dy, dx, dh, dw)``, and anchors from
torchvision's aspect ratio h/w to Model Garden's w/h. The class-specific layers (91 COCO
classes, 3 anchors per location) are left at Model Garden's initialisation wherever ours
differ, and the report names them. The norms the converter adds are identities, and
``identity_norms`` keeps them frozen so the converted model computes torchvision's function
in training too.

The model computes as torchvision's does (the profile's ``torchvision_ops``,
:mod:`helpers.train.torchvision_ops`): the backbone pads as torch pads (``resnet_torch``,
:mod:`helpers.train.torch_resnet`), anchors are centred on k x stride and rounded, and ROIAlign
averages 2 x 2 samples a bin. With COCO's classes kept, its proposals, boxes, scores and masks are
torchvision's to float32 rounding (tests/train/test_torch_convert.py, end to end).

Where it is read: a checkpoint of :func:`transferable_items` (backbone, decoder and the heads'
shared layers, as nested ``tf.train.Checkpoint`` objects) is restored by the task's
``initialize`` (:func:`restore_transferable`) with ``assert_existing_objects_matched`` and
``assert_consumed``, after the architecture recorded beside it (``conversion.json``) is
compared with the model's, so another architecture fails before anything is loaded.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from helpers.atomic import atomic_write_json, discard_tree
from helpers.train import torch_export
from helpers.train.config import HEAD_MODULES
from helpers.errors import UserError

TORCH_BN_EPS = 1e-5                 # torch.nn.BatchNorm2d's default, torchvision's everywhere
CHECKPOINT_NAME = "model"           # <folder>/model.index, model.data-*
CONVERSION_FILE = "conversion.json"  # source, architecture, what was mapped


class ConversionError(UserError, ValueError):
    """The weights do not fit the model (shapes, layout, epsilon): nothing was written."""


@dataclasses.dataclass
class Report:
    """What :func:`map_maskrcnn` / :func:`map_resnet` did, layer by layer."""

    mapped: list = dataclasses.field(default_factory=list)         # Model Garden layers set
    folded: list = dataclasses.field(default_factory=list)         # a torch BN folded into a conv
    added: list = dataclasses.field(default_factory=list)          # identity layers torch lacks
    reinitialised: list = dataclasses.field(default_factory=list)  # (layer, why): left at init
    unused: list = dataclasses.field(default_factory=list)         # torch keys with no counterpart

    def summary(self) -> str:
        lines = [f"{len(self.mapped)} Model Garden layers from torchvision's weights "
                 f"({len(self.folded)} with a batch norm folded in), {len(self.added)} identity "
                 "layers added where torchvision has none"]
        lines += [f"re-initialised: {name} ({why})" for name, why in self.reinitialised]
        if self.unused:
            lines.append(f"not used: {', '.join(self.unused)}")
        return "\n".join(lines)


class _Source:
    """A torch ``state_dict`` as numpy arrays, remembering which keys were used."""

    def __init__(self, state_dict: Mapping, prefix: str = ""):
        self.arrays = {k: _numpy(v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
        self.prefix = prefix
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        return self.prefix + key in self.arrays

    def peek(self, key: str) -> np.ndarray:
        return self.arrays[self.prefix + key]

    def take(self, key: str) -> np.ndarray:
        full = self.prefix + key
        if full not in self.arrays:
            raise ConversionError(f"the torchvision weights have no {full!r}: not a torchvision "
                                  "Mask R-CNN / ResNet of this layout")
        self.used.add(full)
        return self.arrays[full]

    def bn(self, key: str) -> list[np.ndarray]:
        return [self.take(f"{key}.{n}") for n in ("weight", "bias", "running_mean", "running_var")]

    def keys_under(self, key: str) -> list[str]:
        return [k[len(self.prefix):] for k in self.arrays if k.startswith(self.prefix + key)]

    def unused(self) -> list[str]:
        return sorted(k for k in self.arrays if k not in self.used)


def _numpy(v) -> np.ndarray:
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


# ----------------------------------------------------------------------------- layouts

def conv_kernel(w: np.ndarray) -> np.ndarray:
    """torch Conv2d ``[out, in, kh, kw]`` -> TF ``[kh, kw, in, out]``."""
    return np.transpose(w, (2, 3, 1, 0))


def deconv_kernel(w: np.ndarray) -> np.ndarray:
    """torch ConvTranspose2d ``[in, out, kh, kw]`` -> TF Conv2DTranspose ``[kh, kw, out, in]``."""
    return np.transpose(w, (2, 3, 1, 0))


def roi_fc_kernel(w: np.ndarray, channels: int) -> np.ndarray:
    """The first fc after ROI features: torch flattens ``(C, H, W)``, Model Garden ``(H, W, C)``."""
    out, n = w.shape
    side = int(round((n / channels) ** 0.5))
    if side * side * channels != n:
        raise ConversionError(f"box head fc takes {n} inputs, not {channels} channels x a square ROI")
    return w.reshape(out, channels, side, side).transpose(2, 3, 1, 0).reshape(n, out)


def box_delta_rows(num: int) -> np.ndarray:
    """Row order taking torch's per-box ``(dx, dy, dw, dh)`` to Model Garden's ``(dy, dx, dh, dw)``."""
    return (np.arange(num // 4)[:, None] * 4 + np.array([1, 0, 3, 2])[None]).reshape(-1)


def fold_bn(kernel: np.ndarray, gamma, beta, mean, var, eps: float = TORCH_BN_EPS):
    """A TF kernel and bias computing conv (no bias) followed by batch norm (inference)."""
    scale = gamma / np.sqrt(var + eps)
    return kernel * scale, beta - mean * scale


# ----------------------------------------------------------------------------- setting layers

def _set(layer, values, report: Report, what: str) -> None:
    want = [tuple(w.shape) for w in layer.weights]
    got = [tuple(v.shape) for v in values]
    if want != got:
        raise ConversionError(f"{layer.name}: Model Garden's layer holds {want}, {what} gives {got}: "
                              "the model was not built with the architecture these weights fit")
    layer.set_weights([np.asarray(v, np.float32) for v in values])
    report.mapped.append(f"{layer.name} <- {what}")


def _set_bn(layer, values, report: Report, what: str) -> None:
    if abs(layer.epsilon - TORCH_BN_EPS) > 1e-9:
        raise ConversionError(f"{layer.name}: batch norm epsilon {layer.epsilon} but torchvision's is "
                              f"{TORCH_BN_EPS}: build the model with norm_epsilon={TORCH_BN_EPS}")
    _set(layer, values, report, what)


def _identity_bn(layer, report: Report) -> None:
    """gamma 1, beta 0, mean 0, variance 1 - eps: y = x exactly (inference mode)."""
    n = layer.weights[0].shape[0]
    layer.set_weights([np.ones(n), np.zeros(n), np.zeros(n), np.full(n, 1.0 - layer.epsilon)])
    report.added.append(layer.name)


def _conv_norm(conv, norm, src: _Source, key: str, report: Report) -> None:
    """torchvision's Conv2dNormActivation ``key`` (``.0`` conv, ``.1`` BN or none) into a
    Model Garden conv (with bias) + BN."""
    w = conv_kernel(src.take(f"{key}.0.weight"))
    if src.has(f"{key}.1.weight"):
        _set(conv, [w, np.zeros(w.shape[-1])] if conv.use_bias else [w], report, f"{key}.0")
        _set_bn(norm, src.bn(f"{key}.1"), report, f"{key}.1")
    else:
        _set(conv, [w, src.take(f"{key}.0.bias")], report, f"{key}.0")
        _identity_bn(norm, report)


def _indices(src: _Source, key: str) -> list[int]:
    return sorted({int(k[len(key):].split(".")[1]) for k in src.keys_under(key + ".")
                   if k[len(key):].split(".")[1].isdigit()})


# ----------------------------------------------------------------------------- backbone

def _block_names(model_id: int):
    """torchvision's ``layer{g}.{i}`` of each Model Garden block, in order."""
    from official.vision.modeling.backbones.resnet import RESNET_SPECS

    for g, (_, _, repeats) in enumerate(RESNET_SPECS[model_id], start=1):
        for i in range(repeats):
            yield f"layer{g}.{i}"


def map_resnet(backbone, src: _Source, report: Report) -> None:
    """torchvision's ResNet (``conv1``... ``layer4``) into Model Garden's ResNet ``backbone``."""
    import tf_keras
    from official.vision.modeling.layers import nn_blocks

    conf = backbone.get_config()
    if conf.get("stem_type", "v0") != "v0" or conf.get("resnetd_shortcut") or conf.get("se_ratio") \
            or conf.get("replace_stem_max_pool") or conf.get("depth_multiplier", 1.0) != 1.0:
        raise ConversionError("only Model Garden's plain ResNet (stem v0, no ResNet-D/SE) fits torchvision's")
    convs = [l for l in backbone.layers if isinstance(l, tf_keras.layers.Conv2D)]
    norms = [l for l in backbone.layers if isinstance(l, tf_keras.layers.BatchNormalization)]
    _set(convs[0], [conv_kernel(src.take("conv1.weight"))], report, "conv1")
    _set_bn(norms[0], src.bn("bn1"), report, "bn1")
    blocks = [l for l in backbone.layers if isinstance(l, (nn_blocks.BottleneckBlock, nn_blocks.ResidualBlock))]
    names = list(_block_names(conf["model_id"]))
    if len(names) != len(blocks):
        raise ConversionError(f"ResNet-{conf['model_id']} has {len(blocks)} blocks, expected {len(names)}")
    for block, name in zip(blocks, names):
        n = 3 if isinstance(block, nn_blocks.BottleneckBlock) else 2
        for j in range(1, n + 1):
            _set(getattr(block, f"_conv{j}"), [conv_kernel(src.take(f"{name}.conv{j}.weight"))], report,
                 f"{name}.conv{j}")
            _set_bn(getattr(block, f"_norm{j}"), src.bn(f"{name}.bn{j}"), report, f"{name}.bn{j}")
        if block._use_projection:
            _shortcut(block, src, name, report)


def _shortcut(block, src: _Source, name: str, report: Report) -> None:
    """The projection shortcut; Model Garden's ResNet-18/34 has one where torchvision has an
    identity (layer1.0): it becomes an identity 1x1 conv and norm."""
    if src.has(f"{name}.downsample.0.weight"):
        _set(block._shortcut, [conv_kernel(src.take(f"{name}.downsample.0.weight"))], report,
             f"{name}.downsample.0")
        _set_bn(block._norm0, src.bn(f"{name}.downsample.1"), report, f"{name}.downsample.1")
    else:
        c = block._shortcut.weights[0].shape[-1]
        block._shortcut.set_weights([np.eye(c, dtype=np.float32)[None, None]])
        report.added.append(block._shortcut.name)
        _identity_bn(block._norm0, report)


# ----------------------------------------------------------------------------- FPN

def map_fpn(decoder, src: _Source, report: Report, min_level: int, max_level: int) -> None:
    """torchvision's ``FeaturePyramidNetwork`` (inner/layer blocks on C2-C5, P6 by max pool)."""
    top = 5
    for level in range(min_level, top + 1):
        k = level - 2
        lateral = decoder.get_layer(f"lateral_{level}")
        w = conv_kernel(src.take(f"inner_blocks.{k}.0.weight"))
        if src.has(f"inner_blocks.{k}.1.weight"):
            w, b = fold_bn(w, *src.bn(f"inner_blocks.{k}.1"))
            report.folded.append(lateral.name)
        else:
            b = src.take(f"inner_blocks.{k}.0.bias")
        _set(lateral, [w, b], report, f"inner_blocks.{k}")
        _conv_norm(decoder.get_layer(f"post_hoc_{level}"), decoder.get_layer(f"norm_{level}"), src,
                   f"layer_blocks.{k}", report)
    if max_level > top + 1:
        raise ConversionError(f"max_level {max_level}: torchvision's FPN ends at P6")
    if max_level == top + 1:
        _p6_as_subsample(decoder, report)


def _p6_as_subsample(decoder, report: Report) -> None:
    """``coarser_6`` as P5[::2, ::2] (torchvision's ``LastLevelMaxPool``: kernel 1, stride 2).
    TF's 'same' padding of a 3x3/2 conv pads nothing on top/left for even sizes (inputs are
    multiples of 2^max_level), so its top-left tap is P5[2i, 2j]."""
    conv = decoder.get_layer("coarser_6")
    c = conv.weights[0].shape[-1]
    kernel = np.zeros((3, 3, c, c), np.float32)
    kernel[0, 0] = np.eye(c)
    conv.set_weights([kernel, np.zeros(c)])
    report.added.append(conv.name)
    # torchvision subsamples the normalised P5; a per-channel affine commutes with it
    norm5, norm6 = decoder.get_layer("norm_5"), decoder.get_layer("norm_6")
    norm6.set_weights(norm5.get_weights())
    report.mapped.append(f"{norm6.name} <- {norm5.name}")


# ----------------------------------------------------------------------------- heads

TORCH_ANCHOR_RATIOS = (0.5, 1.0, 2.0)  # torchvision's default anchors: h/w, sizes 32-512 on P2-P6


def map_rpn(head, src: _Source, report: Report, anchor) -> None:
    """torchvision's ``RPNHead`` (``conv.i`` with bias, then the two 1x1 predictors);
    ``anchor`` is the model's ``Anchor`` config."""
    convs = _indices(src, "conv")
    if len(convs) != len(head._convs):
        raise ConversionError(f"the RPN head has {len(head._convs)} convs, torchvision's {len(convs)}: "
                              f"set rpn_convs={len(convs)}")
    for i, conv in enumerate(head._convs):
        _set(conv, [conv_kernel(src.take(f"conv.{i}.0.weight")), src.take(f"conv.{i}.0.bias")], report,
             f"rpn.head.conv.{i}")
    for level_norms in head._norms:
        for norm in level_norms:
            _identity_bn(norm, report)
    order = _anchor_order(anchor)
    if order is None:
        for layer in (head._classifier, head._box_regressor):
            report.reinitialised.append((layer.name, "our anchors differ from torchvision's "
                                                     "(32-512 px, one scale, 3 aspect ratios)"))
        return
    rows = box_delta_rows(4 * len(order)).reshape(-1, 4)[order].reshape(-1)
    _set(head._classifier, [conv_kernel(src.take("cls_logits.weight")[order]), src.take("cls_logits.bias")[order]],
         report, "rpn.head.cls_logits")
    _set(head._box_regressor, [conv_kernel(src.take("bbox_pred.weight")[rows]), src.take("bbox_pred.bias")[rows]],
         report, "rpn.head.bbox_pred")


def _anchor_order(anchor):
    """Torch anchor index of each Model Garden anchor, or None when the anchors differ.
    torchvision: sizes 32 x 2^(level-2), one per level, aspect ratio h/w; Model Garden:
    anchor_size x 2^level, aspect ratio w/h."""
    ratios = list(anchor.aspect_ratios)
    if anchor.num_scales != 1 or abs(anchor.anchor_size - 8.0) > 1e-6 or len(ratios) != len(TORCH_ANCHOR_RATIOS):
        return None
    order = []
    for r in ratios:
        match = [j for j, t in enumerate(TORCH_ANCHOR_RATIOS) if abs(t * r - 1.0) < 1e-6]
        if not match:
            return None
        order.append(match[0])
    return np.array(order)


def map_box_head(head, src: _Source, report: Report, roi_channels: int, num_classes: int) -> None:
    """torchvision's ``FastRCNNConvFCHead`` (or ``TwoMLPHead``) and ``FastRCNNPredictor``."""
    convs = [i for i in _indices(src, "box_head") if src.has(f"box_head.{i}.0.weight")]
    fcs = ([f"box_head.{i}" for i in _indices(src, "box_head") if src.has(f"box_head.{i}.weight")]
           or [k for k in ("box_head.fc6", "box_head.fc7") if src.has(f"{k}.weight")])
    if len(convs) != len(head._convs) or len(fcs) != len(head._fcs):
        raise ConversionError(f"the box head has {len(head._convs)} convs and {len(head._fcs)} fcs, "
                              f"torchvision's {len(convs)} and {len(fcs)}: set head_convs/head_fcs")
    for conv, norm, i in zip(head._convs, head._conv_norms, convs):
        _conv_norm(conv, norm, src, f"box_head.{i}", report)
    channels = head._convs[-1].filters if head._convs else roi_channels
    for j, (fc, norm, key) in enumerate(zip(head._fcs, head._fc_norms, fcs)):
        w = src.take(f"{key}.weight")
        _set(fc, [roi_fc_kernel(w, channels) if j == 0 else w.T, src.take(f"{key}.bias")], report, key)
        _identity_bn(norm, report)
    k = src.peek("box_predictor.cls_score.weight").shape[0]
    if k != num_classes or head._box_regressor.units != 4 * k:
        for layer in (head._classifier, head._box_regressor):
            report.reinitialised.append((layer.name, f"class-specific: {num_classes} classes here, "
                                                     f"{k} in torchvision's"))
        return
    w, b = src.take("box_predictor.cls_score.weight"), src.take("box_predictor.cls_score.bias")
    wb, bb = src.take("box_predictor.bbox_pred.weight"), src.take("box_predictor.bbox_pred.bias")
    rows = box_delta_rows(wb.shape[0])
    _set(head._classifier, [w.T, b], report, "box_predictor.cls_score")
    _set(head._box_regressor, [wb[rows].T, bb[rows]], report, "box_predictor.bbox_pred")


def map_mask_head(head, src: _Source, report: Report, num_classes: int) -> None:
    """torchvision's ``MaskRCNNHeads`` and ``MaskRCNNPredictor``."""
    convs = _indices(src, "mask_head")
    if len(convs) != len(head._convs):
        raise ConversionError(f"the mask head has {len(head._convs)} convs, torchvision's {len(convs)}: "
                              "set mask_convs")
    for conv, norm, i in zip(head._convs, head._conv_norms, convs):
        _conv_norm(conv, norm, src, f"mask_head.{i}", report)
    _set(head._deconv, [deconv_kernel(src.take("mask_predictor.conv5_mask.weight")),
                        src.take("mask_predictor.conv5_mask.bias")], report, "mask_predictor.conv5_mask")
    _identity_bn(head._deconv_bn, report)
    k = src.peek("mask_predictor.mask_fcn_logits.weight").shape[0]
    if k != num_classes or head._config_dict["class_agnostic"]:
        report.reinitialised.append((head._mask_regressor.name, f"class-specific: {num_classes} classes "
                                                                f"here, {k} in torchvision's"))
        return
    w, b = src.take("mask_predictor.mask_fcn_logits.weight"), src.take("mask_predictor.mask_fcn_logits.bias")
    _set(head._mask_regressor, [conv_kernel(w), b], report, "mask_predictor.mask_fcn_logits")


def map_maskrcnn(state_dict: Mapping, model, model_config) -> Report:
    """Write torchvision's Mask R-CNN ``state_dict`` into Model Garden's ``model`` (built from
    ``model_config``, a ``MaskRCNN`` config); the :class:`Report` says what went where."""
    report = Report()
    src = _Source(state_dict)
    src.prefix = "backbone.body."
    map_resnet(model.backbone, src, report)
    src.prefix = "backbone.fpn."
    map_fpn(model.decoder, src, report, model_config.min_level, model_config.max_level)
    src.prefix = "rpn.head."
    map_rpn(model.rpn_head, src, report, model_config.anchor)
    src.prefix = "roi_heads."
    map_box_head(_detection_head(model), src, report, model_config.decoder.fpn.num_filters,
                 model_config.num_classes)
    map_mask_head(model.mask_head, src, report, model_config.num_classes)
    report.unused = src.unused()
    return report


# ----------------------------------------------------------------------------- checkpoints

def transferable_items(model, modules=("backbone", "decoder") + HEAD_MODULES) -> dict:
    """The nested ``tf.train.Checkpoint`` items of what a converted checkpoint holds: the
    backbone, the decoder and the heads' class-agnostic layers (not the predictors, whose
    shapes depend on our classes and anchors)."""
    import tensorflow as tf

    rpn, det, mask = model.rpn_head, _detection_head(model), model.mask_head
    every = {
        "backbone": lambda: model.backbone,
        "decoder": lambda: model.decoder,
        "rpn_head": lambda: tf.train.Checkpoint(convs=rpn._convs, norms=rpn._norms),
        "detection_head": lambda: tf.train.Checkpoint(convs=det._convs, conv_norms=det._conv_norms,
                                                      fcs=det._fcs, fc_norms=det._fc_norms),
        "mask_head": lambda: tf.train.Checkpoint(convs=mask._convs, conv_norms=mask._conv_norms,
                                                 deconv=mask._deconv, deconv_norm=mask._deconv_bn),
    }
    unknown = set(modules) - set(every)
    if unknown:
        raise ValueError(f"unknown module(s) {sorted(unknown)}; use {sorted(every)}")
    return {m: every[m]() for m in modules}


def _detection_head(model):
    """The (first) box head: Model Garden keeps a list, one per cascade stage."""
    heads = model.detection_head
    if isinstance(heads, (list, tuple)):
        if len(heads) != 1:
            raise ConversionError("a cascade of box heads has no torchvision counterpart")
        return heads[0]
    return heads


def added_norms(model) -> list:
    """The norms Model Garden has and torchvision lacks (after the RPN convs, the box head's
    fcs and the mask deconv): identities in a converted model."""
    rpn, det, mask = model.rpn_head, _detection_head(model), model.mask_head
    return [n for level in rpn._norms for n in level] + list(det._fc_norms) + [mask._deconv_bn]


def weight_architecture(model_config) -> dict:
    """The config fields that decide the shapes and meaning of the transferable weights."""
    c = model_config
    return {
        "backbone": f"resnet{c.backbone.get().model_id}", "min_level": c.min_level,
        "max_level": c.max_level, "fpn_filters": c.decoder.fpn.num_filters,
        "rpn_convs": c.rpn_head.num_convs, "rpn_filters": c.rpn_head.num_filters,
        "head_convs": c.detection_head.num_convs, "head_filters": c.detection_head.num_filters,
        "head_fcs": c.detection_head.num_fcs, "head_fc_dims": c.detection_head.fc_dims,
        "roi_crop": c.roi_aligner.crop_size, "mask_convs": c.mask_head.num_convs,
        "mask_filters": c.mask_head.num_filters, "mask_upsample": c.mask_head.upsample_factor,
        "norm_epsilon": c.norm_activation.norm_epsilon,
    }


def write_converted(folder: Path, items: dict, record: dict) -> str:
    """Save ``items`` as ``folder/model`` with ``conversion.json`` beside it, all or nothing:
    written in a temp folder that is renamed onto ``folder``. Returns the checkpoint prefix."""
    import tensorflow as tf

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.converting")
    discard_tree(tmp)  # a killed conversion's leftovers, kept out of Drive's Trash
    tmp.mkdir(parents=True)
    tf.train.Checkpoint(**items).write(str(tmp / CHECKPOINT_NAME))
    atomic_write_json(tmp / CONVERSION_FILE, record)
    os.replace(tmp, folder)
    return str(folder / CHECKPOINT_NAME)


def converted_prefix(path) -> str | None:
    """The checkpoint prefix when ``path`` (a folder or a prefix) is a conversion of ours
    (``conversion.json`` beside it), else None."""
    if not path:
        return None
    p = Path(str(path))
    prefix = p / CHECKPOINT_NAME if p.is_dir() else p
    return str(prefix) if (prefix.parent / CONVERSION_FILE).is_file() else None


def read_conversion(prefix) -> dict | None:
    """The ``conversion.json`` beside a converted checkpoint, or None (not converted by us)."""
    path = Path(str(prefix)).parent / CONVERSION_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ConversionError(f"{path} is damaged ({e}); delete {path.parent} to convert again") from e


def restore_transferable(model, prefix: str, modules, model_config) -> None:
    """Load a converted checkpoint into ``model``: the architecture recorded at conversion must
    be the model's (else nothing is loaded), and every object of ``modules`` must be matched and
    every value in the checkpoint consumed."""
    import tensorflow as tf

    record = read_conversion(prefix)
    if record is not None:
        diffs = {k: (v, weight_architecture(model_config).get(k)) for k, v in record["architecture"].items()
                 if weight_architecture(model_config).get(k) != v}
        if diffs:
            shown = ", ".join(f"{k} {a!r} there, {b!r} here" for k, (a, b) in sorted(diffs.items()))
            raise ConversionError(f"{prefix} was converted for another architecture ({shown}). Use the "
                                  "profile's own knobs for this start, or convert again for this one.")
        missing = set(modules) - set(record["modules"])
        if missing:
            raise ConversionError(f"{prefix} holds {record['modules']}, not {sorted(missing)}")
    status = tf.train.Checkpoint(**transferable_items(model, modules)).read(str(prefix))
    status.assert_existing_objects_matched()
    status.assert_consumed()


# ----------------------------------------------------------------------------- the starts

class PretrainedWeightsUnavailable(UserError, RuntimeError):
    """Pretrained weights could not be reached or converted; the message says what to do."""


# start -> backbone depth -> torchvision's weights (torchvision.models.get_weight names)
TORCHVISION_WEIGHTS = {
    "coco": {50: "MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1"},
    "imagenet-torchvision": {50: "ResNet50_Weights.IMAGENET1K_V2", 101: "ResNet101_Weights.IMAGENET1K_V2"},
}
_BACKBONE_FIELDS = ("backbone", "norm_epsilon")  # what a backbone-only conversion depends on


def source_weights(start: str, depth: int) -> str:
    """torchvision's weights name for a start and backbone depth."""
    by_depth = TORCHVISION_WEIGHTS[start]
    if depth not in by_depth:
        raise PretrainedWeightsUnavailable(
            f"torchvision publishes {start!r} weights for ResNet-{'/'.join(map(str, by_depth))} only, "
            f"not ResNet-{depth}: use the profile's own backbone for this start")
    return by_depth[depth]


def _architecture(model_config, modules) -> dict:
    arch = weight_architecture(model_config)
    return arch if set(modules) & set(HEAD_MODULES + ("decoder",)) else {k: arch[k] for k in _BACKBONE_FIELDS}


def cache_folder(root, start: str, model_config, modules) -> Path:
    """``<workspace>/pretrained/torchvision-<weights>-<architecture hash>``: one conversion
    per source and architecture."""
    import hashlib

    name = source_weights(start, model_config.backbone.get().model_id)
    arch = json.dumps(_architecture(model_config, modules), sort_keys=True)
    return Path(root) / "pretrained" / f"torchvision-{name.replace('.', '-')}-{hashlib.sha256(arch.encode()).hexdigest()[:8]}"


def resolve_start(root, start: str, model_config, modules) -> str:
    """The converted checkpoint of a torchvision start for ``model_config`` (cached in
    ``<root>/pretrained/``): downloaded by torchvision and converted the first time, read
    back whole every time; a damaged cached copy is deleted and converted again, and what a
    killed or older run left beside it is deleted too (by :func:`helpers.atomic.discard`: on
    Drive, nothing goes to its Trash with its bytes)."""
    from helpers.train import checkpoints as ckpts

    modules = [modules] if isinstance(modules, str) else list(modules)
    folder = cache_folder(root, start, model_config, modules)
    prefix = folder / CHECKPOINT_NAME
    for stale in (*folder.parent.glob(f".{folder.name}.*"), *folder.parent.glob(f"{folder.name}.damaged-*")):
        discard_tree(stale)  # a killed conversion's temp folder or file, a copy set aside by an older release
    if folder.is_dir():
        reason = ckpts.check_checkpoint(prefix) or (None if (folder / CONVERSION_FILE).is_file()
                                                    else f"no {CONVERSION_FILE}")
        if reason is None:
            return str(prefix)
        discard_tree(folder)  # our own cache, made again from torchvision's weights
        print(f"the converted weights in {folder} were damaged ({reason}); deleted, converting again")
    name = source_weights(start, model_config.backbone.get().model_id)
    # the ~185 MB intermediate file stays on the runtime's own disk, never on Drive
    with tempfile.TemporaryDirectory(prefix="nuclei-torchvision-") as local:
        npz = Path(local) / "state_dict.npz"
        export_torchvision(name, npz)
        with np.load(npz) as data:
            state = dict(data)
    convert(state, model_config, modules, folder, source=name)
    return str(prefix)


# torch_export's exit codes -> what went wrong and what to do
_EXPORT_FAILURES = {
    torch_export.NO_TORCH: "the {name} start converts torchvision's weights and needs torch and torchvision "
                           "({detail}). Colab has both; elsewhere `pip install torch torchvision`.",
    torch_export.NO_DOWNLOAD: "torchvision's {name} could not be downloaded ({detail}): this runtime has no network "
                              "to torchvision's server. Re-run once it has one (the weights are then cached).",
    torch_export.DAMAGED: "torchvision's download of {name} was damaged twice ({detail}); it has been removed. "
                          "Re-run to download it again.",
    torch_export.CUT: "the download of torchvision's {name} was cut off ({detail}): the connection dropped. "
                      "Re-run to download it again.",
    torch_export.REFUSED: "torchvision's server did not give {name} ({detail}). Re-run later; if it persists, the "
                          "file has moved and this version of torchvision cannot fetch it.",
    torch_export.MISFIT: "torchvision's {name} could not be loaded ({detail}).",
}


def export_torchvision(name: str, out: Path) -> None:
    """torchvision's weights ``name`` as ``out`` (.npz), by :mod:`helpers.train.torch_export`
    in a subprocess (torch never enters this TensorFlow process)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    print(f"downloading torchvision's {name} and converting it for Model Garden (once; cached)")
    proc = subprocess.Popen([sys.executable, "-m", "helpers.train.torch_export", name, str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tail = ""
    for chunk in iter(lambda: proc.stderr.read(512), ""):  # torchvision's download progress
        sys.stderr.write(chunk)
        tail = (tail + chunk)[-800:]
    said = proc.stdout.read().strip()
    proc.wait()
    detail = (said.splitlines() or [""])[-1]
    other = ("Or choose another start: pretrained='imagenet' (Model Garden's ImageNet backbone), or "
             "from_scratch=True.")
    why = _EXPORT_FAILURES.get(proc.returncode)
    if why is not None:
        raise PretrainedWeightsUnavailable(f"{why.format(name=name, detail=detail)} {other}")
    if proc.returncode != 0:
        raise PretrainedWeightsUnavailable(f"exporting torchvision's {name} failed (exit {proc.returncode}): "
                                           f"{said[-400:]} {tail}")


def convert(state_dict: Mapping, model_config, modules, folder: Path, source: str = "") -> Report:
    """Map ``state_dict`` (torchvision's Mask R-CNN, or a ResNet for ``modules=["backbone"]``)
    into a Model Garden model built from ``model_config`` and write what ``modules`` name to
    ``folder`` (:func:`write_converted`). Returns the :class:`Report`."""
    from official.vision.configs import maskrcnn as mg_cfg
    from official.vision.tasks import maskrcnn as mg_task

    from helpers.train import torch_resnet  # noqa: F401 - registers resnet_torch with Model Garden's backbone factory

    modules = [modules] if isinstance(modules, str) else list(modules)
    model = mg_task.MaskRCNNTask(mg_cfg.MaskRCNNTask(model=model_config)).build_model()
    if set(modules) == {"backbone"}:
        report, src = Report(), _Source(state_dict)
        map_resnet(model.backbone, src, report)
        report.unused = src.unused()
    else:
        report = map_maskrcnn(state_dict, model, model_config)
    record = {"source": source, "modules": modules, "architecture": _architecture(model_config, modules),
              "report": dataclasses.asdict(report), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_converted(folder, transferable_items(model, modules), record)
    print(report.summary())
    return report
