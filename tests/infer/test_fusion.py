import numpy as np
import pytest

from helpers.detections import Detections
from helpers.rle import decode_rles, rle_iou
from helpers.infer.fusion import merge_detections

from _masks import H, W, dets, disk, two_models


@pytest.mark.parametrize("method", ["nms", "wmf"])
def test_merge_removes_duplicates_keeps_neighbours(method):
    a, b, truth = two_models()
    merged = merge_detections([a, b], method=method, iou_threshold=0.5)
    assert len(merged) == 5
    iou = rle_iou(merged.rles, Detections.from_masks(np.stack(truth), [1] * 5).rles)
    assert (iou.max(axis=0) > 0.8).all()  # every nucleus once, close to its mask
    assert ((iou > 0.5).sum(axis=0) == 1).all()
    assert np.all(np.diff(merged.scores) <= 0)
    # the threshold is a knob: at 0.99 only the identical copies of nucleus 3 are fused
    assert len(merge_detections([a, b], method=method, iou_threshold=0.99)) == 7


def test_nms_keeps_best_scoring_mask():
    a, b, _ = two_models()
    merged = merge_detections([a, b], method="nms")
    assert merged.scores.tolist() == [0.9, 0.9, 0.85, 0.6, 0.5]
    assert merged.rles[0] == a.rles[0] or merged.rles[0] == b.rles[1]


def test_wmf_votes_pixels_and_rescales_scores():
    base = disk(60, 60, 10)
    parts = [dets([base], [0.9]), dets([np.roll(base, 2, 1)], [0.9]), dets([base], [0.9])]
    merged = merge_detections(parts, method="wmf")
    assert len(merged) == 1
    assert np.array_equal(decode_rles(merged.rles)[0], base)  # 2 of 3 votes
    assert merged.scores[0] == pytest.approx(0.9)
    # found by one source of two -> half the score
    lone = merge_detections([dets([base], [0.8]), Detections.empty((H, W))], method="wmf")
    assert lone.scores[0] == pytest.approx(0.4)
    with pytest.raises(ValueError, match="unknown"):
        merge_detections(parts, method="mean")


def test_wmf_counts_each_source_once_per_nucleus():
    # a pass that found a nucleus twice (a weak duplicate, mask IoU > 0.5) votes with its best
    # copy only: the duplicate must not pull the nucleus below one that no pass doubled
    n1, n2 = disk(40, 40, 10), disk(80, 80, 10)
    doubled = dets([n1, np.roll(n1, 1, 1), n2], [0.9, 0.1, 0.8])
    clean = dets([n1, n2], [0.9, 0.8])
    merged = merge_detections([doubled, clean], method="wmf")
    assert len(merged) == 2
    assert merged.scores.tolist() == pytest.approx([0.9, 0.8])
    assert np.array_equal(decode_rles(merged.rles)[0], n1)  # the duplicate casts no pixel vote


# ----------------------------------------------------------------------------- tiles
# ----------------------------------------------------------------------------- compare
