"""The segmentation rule: which detections one label image keeps, and how overlaps are cut."""
import numpy as np
import pytest

from helpers.detections import Detections
from helpers.infer.segmentation import DEFAULT_RULE, SegmentationError, SegmentationRule, cut, paint
from helpers.rle import rle_area


def _square(size, y, x, side):
    m = np.zeros(size, bool)
    m[y:y + side, x:x + side] = True
    return m


def test_overlaps_go_to_the_higher_score_and_covered_detections_drop_out():
    size = (20, 30)
    a, b, inner = _square(size, 2, 2, 10), _square(size, 6, 6, 10), _square(size, 8, 8, 2)  # inner: under b
    dets = Detections.from_masks(np.stack([a, b, inner]), [0.7, 0.9, 0.6])
    labels, scores = DEFAULT_RULE.label_image(dets)
    assert labels.max() == 2 and list(scores) == [0.9, 0.7]
    assert (labels == 1).sum() == 100 and (labels == 2).sum() == 100 - 36
    assert rle_area(dets.rles)[2] == 4 and not (labels == 3).any()


def test_a_nucleus_is_one_connected_region_or_dropped():
    """A detection cut in pieces by a better one keeps its largest piece, no crumbs; one left with
    less than min_kept of its mask is dropped."""
    size = (30, 30)
    bar = np.zeros(size, bool)
    bar[10:14, 2:28] = True                                  # a long one, cut in three by two better ones
    left, right = _square(size, 6, 6, 10), np.zeros(size, bool)
    right[6:16, 18:24] = True
    dets = Detections.from_masks(np.stack([left, right, bar]), [0.9, 0.8, 0.7])
    labels, scores = SegmentationRule(min_kept=0.0).label_image(dets)
    from scipy import ndimage

    for k in range(1, labels.max() + 1):
        assert ndimage.label(labels == k)[1] == 1, f"nucleus {k} is in pieces"
    assert (labels == 3).sum() == 4 * 4  # bar's pieces: cols 2-5, 16-17, 24-27: the first largest kept
    dropped, _ = SegmentationRule(min_kept=0.5).label_image(dets)
    assert dropped.max() == 2 and not (dropped == 3).any()  # 16 px of its 104 is a duplicate's remains


def test_min_area_drops_small_nuclei():
    size = (20, 20)
    dets = Detections.from_masks(np.stack([_square(size, 1, 1, 6), _square(size, 10, 10, 3)]), [0.9, 0.8])
    assert SegmentationRule(min_area=10).label_image(dets)[0].max() == 1
    assert SegmentationRule(min_area=9).label_image(dets)[0].max() == 2


def test_any_threshold_is_a_prefix_of_one_painting():
    """cut(paint(floor), t) equals painting at t directly, for random overlapping detections."""
    rng = np.random.default_rng(0)
    size = (48, 48)
    masks = np.stack([_square(size, *rng.integers(0, 40, 2), int(rng.integers(3, 12))) for _ in range(40)])
    dets = Detections.from_masks(masks, rng.uniform(0.05, 1, 40))
    full, scores = paint(dets, 0.05)
    for t in (0.1, 0.33, 0.5, 0.9):
        direct, direct_scores = paint(dets, t)
        prefix, prefix_scores = cut(full, scores, t)
        np.testing.assert_array_equal(prefix, direct)
        np.testing.assert_array_equal(prefix_scores, direct_scores)
        assert (direct_scores >= t).all() and (np.diff(direct_scores) <= 0).all()


def test_a_relative_threshold_follows_the_images_own_scores():
    """An image whose scores all run low keeps its nuclei under a relative rule, not an absolute one."""
    size = (40, 40)
    masks = np.stack([_square(size, 2 + 9 * (i // 4), 2 + 9 * (i % 4), 6) for i in range(16)])
    high = Detections.from_masks(masks, np.linspace(0.95, 0.8, 16))
    low = high.with_scores(high.scores * 0.4)  # the same nuclei, scored as on unfamiliar tissue
    absolute = SegmentationRule(min_score=0.5)
    relative = SegmentationRule(min_score=0.5, relative=0.6, quantile=0.9)
    assert absolute.label_image(high)[0].max() == 16 and absolute.label_image(low)[0].max() == 0
    assert relative.threshold(high) == 0.5  # never above min_score
    assert relative.threshold(low) == pytest.approx(0.6 * np.quantile(low.scores, 0.9))
    assert relative.label_image(low)[0].max() == 16
    assert relative.with_min_score(0.3) == SegmentationRule(min_score=0.3)


def test_rules_round_trip_and_bad_values_are_named():
    rule = SegmentationRule(min_score=0.35, relative=0.5, quantile=0.8, min_kept=0.25, min_area=12)
    assert SegmentationRule.from_json(rule.to_json()) == rule
    for bad in ({"min_score": 1.5}, {"min_kept": -1}, {"quantile": 0}):
        with pytest.raises(SegmentationError):
            SegmentationRule(**bad)
    with pytest.raises(SegmentationError, match="unknown"):
        SegmentationRule.from_json({"threshold": 0.5})
    assert "score >= 0.35" not in rule.describe() and "0.8" not in rule.describe()
    assert "80th" in rule.describe() and "12 px" in rule.describe()
