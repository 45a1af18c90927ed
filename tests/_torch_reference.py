"""torchvision's side of the converter tests, run as a subprocess (torch only, no TensorFlow:
see helpers/train/torch_export.py for why).

    python tests/_torch_reference.py OUT.npz [--side 128] [--seed 0] [--num-classes 91]

Builds torchvision's maskrcnn_resnet50_fpn_v2 with random weights (weights=None), gives
every batch norm random statistics and affines and every bias random values (torchvision's
identity initialisation would hide a swapped mean and variance), and saves, for one smooth
random image:

  sd/<key>                 the state dict
  x                        the input, NHWC, normalised as both models expect
  fpn/<l>, fpn_tf/<l>      FPN outputs (NHWC) of levels 2-6; fpn_tf with TensorFlow's 'same'
                           padding given to every stride-2 conv and pool
  rpn_scores/<l>, rpn_deltas/<l>  the RPN head on fpn/* (NCHW as torch returns them)
  rois                     16 boxes (x1, y1, x2, y2, image px)
  box_feats, box_cls, box_deltas  box ROIAlign of fpn/* on rois, then box head + predictor
  mask_feats, mask_logits  mask ROIAlign, then mask head + predictor (all classes)

and the whole model in inference, as ``GeneralizedRCNN.forward`` runs it after its transform
(the input is already normalised and a multiple of 32, so the transform's resize is left out):

  e2e/anchors, e2e/objectness, e2e/proposals   every anchor (x1 y1 x2 y2), its objectness
                           logit and its decoded proposal before NMS, levels 2-6, each level
                           ordered (y, x, anchor) as ``concat_box_prediction_layers`` orders it
  e2e/rois, e2e/roi_scores the RPN's proposals after NMS (``filter_proposals``)
  e2e/box_scores, e2e/box_boxes  the box head on those: softmax scores and decoded, clipped
                           boxes of every class but the background ([N, 90], [N, 90, 4])
  e2e/det_boxes, e2e/det_scores, e2e/det_labels, e2e/det_masks  the final detections, masks
                           as the 28 x 28 probabilities of the detected class, before pasting
  nuclei_anchors           torchvision's AnchorGenerator with sizes of our own (NUCLEI_ANCHORS:
                           two a level, not whole pixels) on the same feature maps, each
                           level ordered (y, x, aspect ratio h/w 0.5, 1, 2, then size)
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.detection import maskrcnn_resnet50_fpn_v2


def randomise(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d)) and m.bias is not None:
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
        # The predictors scaled to the range of a trained model's outputs (random ones give
        # logits of ~100, saturated scores and deltas that throw every box off the image).
        for layer, scale in PREDICTOR_SCALES.items():
            for v in model.get_submodule(layer).parameters():
                v.mul_(scale)
    return model.eval()


# std of the outputs on the test image: objectness ~2, RPN deltas ~0.3, class logits ~3,
# box deltas ~2 (before their 10/10/5/5 weights), mask logits ~3
PREDICTOR_SCALES = {"rpn.head.cls_logits": 0.4, "rpn.head.bbox_pred": 0.04, "roi_heads.box_predictor.cls_score": 0.025,
                    "roi_heads.box_predictor.bbox_pred": 0.015, "roi_heads.mask_predictor.mask_fcn_logits": 0.004}


def tf_padding(module):
    """TensorFlow's 'same' padding on every stride-2 conv and pool (more at the bottom/right)."""
    for m in module.modules():
        if not isinstance(m, (torch.nn.Conv2d, torch.nn.MaxPool2d)):
            continue
        stride = m.stride if isinstance(m.stride, int) else m.stride[0]
        k = m.kernel_size if isinstance(m.kernel_size, int) else m.kernel_size[0]
        if stride != 2 or k == 1:
            continue
        lo, hi = (k - 2) // 2, (k - 2) - (k - 2) // 2
        fill = float("-inf") if isinstance(m, torch.nn.MaxPool2d) else 0.0
        m.padding = 0 if isinstance(m, torch.nn.MaxPool2d) else (0, 0)
        m.register_forward_pre_hook(lambda mod, inp, lo=lo, hi=hi, fill=fill:
                                    (F.pad(inp[0], (lo, hi, lo, hi), value=fill),))


def image(side: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 1, (side // 8, side // 8, 3))
    img = np.kron(coarse, np.ones((8, 8, 1))) * 0.7 + 0.3 * rng.uniform(0, 1, (side, side, 3))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((img - mean) / std).astype(np.float32)[None]


def rois(side: int, seed: int, n: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    size = rng.uniform(8, side * 0.6, (n, 2))
    lo = rng.uniform(0, 1, (n, 2)) * (side - size)
    return np.concatenate([lo, lo + size], axis=1).astype(np.float32)


def nhwc(t) -> np.ndarray:
    return np.transpose(t.detach().numpy(), (0, 2, 3, 1))


# the colab profile's anchors: anchor_size 3 x stride, 2 scales a level (x 2^0, x 2^0.5), on P2-P6
NUCLEI_ANCHORS = tuple((3.0 * 2 ** lvl, 3.0 * 2 ** lvl * 2 ** 0.5) for lvl in range(2, 7))


def nuclei_anchors(xt, feats) -> np.ndarray:
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    generator = AnchorGenerator(NUCLEI_ANCHORS, ((0.5, 1.0, 2.0),) * len(NUCLEI_ANCHORS))
    return generator(ImageList(xt, [tuple(xt.shape[-2:])]), list(feats.values()))[0].numpy()


def end_to_end(model, xt, feats) -> dict:
    """torchvision's inference, stage by stage (see the module doc)."""
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.rpn import concat_box_prediction_layers
    from torchvision.ops import boxes as box_ops

    sizes = [tuple(xt.shape[-2:])]
    images, levels = ImageList(xt, sizes), list(feats.values())
    objectness, deltas = model.rpn.head(levels)
    anchors = model.rpn.anchor_generator(images, levels)
    per_level = [o[0].numel() for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    proposals = model.rpn.box_coder.decode(deltas, anchors).view(1, -1, 4)
    rois, roi_scores = model.rpn.filter_proposals(proposals, objectness, sizes, per_level)
    heads = model.roi_heads
    logits, regression = heads.box_predictor(heads.box_head(heads.box_roi_pool(feats, rois, sizes)))
    boxes = box_ops.clip_boxes_to_image(heads.box_coder.decode(regression, rois), sizes[0])
    detections, _ = heads(feats, rois, sizes)
    det = detections[0]
    return {"e2e/anchors": anchors[0].numpy(), "e2e/objectness": objectness[:, 0].numpy(),
            "e2e/proposals": proposals[0].numpy(), "e2e/rois": rois[0].numpy(), "e2e/roi_scores": roi_scores[0].numpy(),
            "e2e/box_scores": F.softmax(logits, -1)[:, 1:].numpy(), "e2e/box_boxes": boxes[:, 1:].numpy(),
            "e2e/det_boxes": det["boxes"].numpy(), "e2e/det_scores": det["scores"].numpy(),
            "e2e/det_labels": det["labels"].numpy(), "e2e/det_masks": det["masks"][:, 0].numpy()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--side", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-classes", type=int, default=91)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    model = randomise(maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None,
                                               num_classes=a.num_classes), a.seed)
    x = image(a.side, a.seed)
    out = {f"sd/{k}": v.numpy() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    out["x"] = x
    xt = torch.from_numpy(np.transpose(x, (0, 3, 1, 2))).contiguous()
    levels = ["2", "3", "4", "5", "6"]
    with torch.no_grad():
        feats = model.backbone(xt)
        out.update({f"fpn/{l}": nhwc(v) for l, v in zip(levels, feats.values())})
        scores, deltas = model.rpn.head(list(feats.values()))
        out.update({f"rpn_scores/{l}": v.numpy() for l, v in zip(levels, scores)})
        out.update({f"rpn_deltas/{l}": v.numpy() for l, v in zip(levels, deltas)})
        boxes = rois(a.side, a.seed)
        out["rois"] = boxes
        sizes = [(a.side, a.side)]
        bf = model.roi_heads.box_roi_pool(feats, [torch.from_numpy(boxes)], sizes)
        cls, dl = model.roi_heads.box_predictor(model.roi_heads.box_head(bf))
        out.update(box_feats=nhwc(bf), box_cls=cls.numpy(), box_deltas=dl.numpy())
        mf = model.roi_heads.mask_roi_pool(feats, [torch.from_numpy(boxes)], sizes)
        out.update(mask_feats=nhwc(mf), mask_logits=model.roi_heads.mask_predictor(model.roi_heads.mask_head(mf)).numpy())
        out.update(end_to_end(model, xt, feats))
        out["nuclei_anchors"] = nuclei_anchors(xt, feats)
        tf_padding(model.backbone)
        out.update({f"fpn_tf/{l}": nhwc(v) for l, v in zip(levels, model.backbone(xt).values())})
    tmp = a.out + ".partial.npz"
    np.savez(tmp, **out)
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
