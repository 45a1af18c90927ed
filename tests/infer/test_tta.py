"""Test-time augmentation geometry (helpers.infer.tta): each view maps back exactly."""
import numpy as np
import pytest

from helpers.detections import Detections
from helpers.infer.tta import TTA_OPS, augment_image, invert_tta, transform_detections


@pytest.mark.parametrize("name", TTA_OPS)
def test_tta_geometry_round_trip(name):
    rng = np.random.default_rng(3)
    masks = np.zeros((6, 30, 44), bool)  # non-square, masks touching borders
    for k in range(6):
        y, x = rng.integers(0, 25, 1)[0], rng.integers(0, 38, 1)[0]
        masks[k, y:y + rng.integers(2, 8), x:x + rng.integers(2, 8)] = True
    masks[0, 0, :] = True
    masks[1, :, -1] = True
    d = Detections.from_masks(masks, np.linspace(0.9, 0.4, 6))
    # what a model predicting the augmented image would output for these nuclei
    seen = Detections.from_masks(np.stack([augment_image(m, name) for m in masks]), d.scores)
    assert transform_detections(d, name).rles == seen.rles
    back = invert_tta(seen, name)
    assert back.size == (30, 44) and back.rles == d.rles and np.allclose(back.scores, d.scores)
    with pytest.raises(ValueError, match="unknown augmentation"):
        invert_tta(seen, "zoom")
