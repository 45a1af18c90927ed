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
    return model.eval()


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
        tf_padding(model.backbone)
        out.update({f"fpn_tf/{l}": nhwc(v) for l, v in zip(levels, model.backbone(xt).values())})
    tmp = a.out + ".partial.npz"
    np.savez(tmp, **out)
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
