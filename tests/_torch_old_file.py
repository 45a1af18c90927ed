"""A torchvision Mask R-CNN file as older torchvision versions saved it (torch only, no TensorFlow).

    python tests/_torch_old_file.py OUT_DIR

Builds maskrcnn_resnet50_fpn_v2 with random weights and writes, in OUT_DIR:

  old.pth   its state dict under the key names of files saved before torchvision versioned its FPN
            and RPN head (``fpn.inner_blocks.<i>.weight``, ``rpn.head.conv.weight``), without the
            version metadata, as torchvision's loading hooks expect such a file;
  old.npz   the same keys and arrays, for the TensorFlow side;
  new.npz   the model's own state dict (today's keys).
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

OLD_KEYS = [(re.compile(r"^(backbone\.fpn\.(inner|layer)_blocks\.\d+)\.0\.weight$"), r"\1.weight"),
            (re.compile(r"^(rpn\.head\.conv)\.0\.0\.(weight|bias)$"), r"\1.\2")]


def old_key(key: str) -> str:
    for pattern, repl in OLD_KEYS:
        key = pattern.sub(repl, key)
    return key


def main():
    out = Path(sys.argv[1])
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=91).eval()
    new = model.state_dict()
    old = {old_key(k): v for k, v in new.items()}  # a plain dict: no _metadata, no versions
    renamed = sum(k != old_key(k) for k in new)
    assert renamed == 10, renamed  # 4 inner + 4 layer blocks, the RPN's first conv (weight, bias)
    torch.save(old, out / "old.pth")
    for name, sd in (("old", old), ("new", new)):
        tmp = out / f"{name}.partial.npz"
        np.savez(tmp, **{k: v.numpy() for k, v in sd.items()})
        os.replace(tmp, out / f"{name}.npz")


if __name__ == "__main__":
    main()
