"""A small torchvision Mask R-CNN trained on the demo data, for the converter's fine-tuning test
(a subprocess: torch only, no TensorFlow).

    python tests/_torch_pretrain.py DEMO_DATASET OUT.npz [--steps 300] [--seed 0]

The model is torchvision's own pieces at the demo profile's sizes, the shapes the converter
maps: ResNet-18 (batch norm), BackboneWithFPN of 32 channels with norm and P6 by max pool, a
1-conv RPN head, FastRCNNConvFCHead with no conv and one 64-wide fc, MaskRCNNHeads of one
32-channel conv + BN and MaskRCNNPredictor. It trains with torchvision's own losses on random
128 px crops of the demo training images; the state dict is saved as .npz.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.models import resnet18
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

CROP = 128


def small_maskrcnn() -> MaskRCNN:
    body = resnet18(weights=None, norm_layer=nn.BatchNorm2d)
    backbone = BackboneWithFPN(body, {f"layer{i}": str(i - 1) for i in range(1, 5)}, [64, 128, 256, 512], 32,
                               extra_blocks=LastLevelMaxPool(), norm_layer=nn.BatchNorm2d)
    anchors = AnchorGenerator(sizes=((12,), (24,), (48,), (96,), (192,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    return MaskRCNN(
        backbone, num_classes=None, min_size=CROP, max_size=CROP, rpn_anchor_generator=anchors,
        rpn_head=RPNHead(32, 3, conv_depth=1),
        box_head=FastRCNNConvFCHead((32, 7, 7), [], [64], norm_layer=nn.BatchNorm2d),
        box_predictor=FastRCNNPredictor(64, 2),
        mask_head=MaskRCNNHeads(32, [32], 1, norm_layer=nn.BatchNorm2d),
        mask_predictor=MaskRCNNPredictor(32, 32, 2),
        rpn_batch_size_per_image=128, box_batch_size_per_image=64, box_detections_per_img=200)


def load(dataset: Path):
    """(image float [3, H, W] in 0-1, masks bool [N, H, W]) of each training image."""
    out = []
    for d in sorted((dataset / "train").iterdir()):
        img = np.asarray(Image.open(d / "images" / f"{d.name}.png").convert("RGB"), np.float32) / 255
        masks = np.stack([np.asarray(Image.open(m)) > 0 for m in sorted((d / "masks").glob("*.png"))])
        out.append((img, masks))
    return out


def sample(data, rng):
    img, masks = data[rng.integers(len(data))]
    h, w = img.shape[:2]
    y, x = rng.integers(0, h - CROP + 1), rng.integers(0, w - CROP + 1)
    img, masks = img[y:y + CROP, x:x + CROP], masks[:, y:y + CROP, x:x + CROP]
    masks = masks[masks.reshape(len(masks), -1).sum(1) >= 4]
    ys, xs = np.any(masks, 2), np.any(masks, 1)
    boxes = np.stack([xs.argmax(1), ys.argmax(1), CROP - xs[:, ::-1].argmax(1), CROP - ys[:, ::-1].argmax(1)], 1)
    return (torch.from_numpy(img.transpose(2, 0, 1).copy()),
            {"boxes": torch.from_numpy(boxes.astype(np.float32)), "labels": torch.ones(len(masks), dtype=torch.int64),
             "masks": torch.from_numpy(masks.astype(np.uint8))})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset", type=Path)
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(2)
    rng = np.random.default_rng(a.seed)
    data = load(a.dataset)
    model = small_maskrcnn().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    for step in range(a.steps):
        img, target = sample(data, rng)
        losses = model([img], [target])
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == a.steps - 1:
            print(f"step {step} loss {float(loss):.3f}", flush=True)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    tmp = a.out + ".partial.npz"
    np.savez(tmp, **state)
    os.replace(tmp, a.out)


if __name__ == "__main__":
    main()
