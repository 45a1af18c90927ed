"""The field's metrics pinned by hand-computed cases (helpers.infer.instance_metrics)."""
import numpy as np
import pytest

from helpers.detections import Detections
from helpers.infer import instance_metrics as im
from helpers.infer.segmentation import SegmentationRule


def labels(*boxes, shape=(4, 8)):
    """A label image: boxes (label, y0, y1, x0, x1), end-exclusive."""
    out = np.zeros(shape, np.int32)
    for lab, y0, y1, x0, x1 in boxes:
        out[y0:y1, x0:x1] = lab
    return out


def test_hand_computed_image():
    """Nucleus 1 (4 px) found by a 6 px detection (IoU 2/3); nucleus 2 (4 px) by a 2 px one
    (IoU 1/2, not a match at IoU > 0.5); one 2 px detection on background."""
    gt = labels((1, 0, 2, 0, 2), (2, 0, 2, 4, 6))
    pred = labels((1, 0, 2, 0, 3), (2, 0, 1, 4, 6), (3, 3, 4, 0, 2))
    s = im.image_scores(gt, pred)
    # AJI: C = 4 + 2, U = 6 + 4 + 2 (the unpaired detection) -> 1/2; AJI+ pairs the same
    assert s["AJI"] == pytest.approx(6 / 12) and s["AJI+"] == pytest.approx(6 / 12)
    # one match (IoU 2/3): TP 1, FP 2, FN 1 -> DQ = 1 / (1 + 1 + 0.5), SQ = 2/3
    assert s["DQ"] == pytest.approx(0.4) == s["F1@0.5"]
    assert s["SQ"] == pytest.approx(2 / 3) and s["PQ"] == pytest.approx(0.4 * 2 / 3)
    assert (s["precision@0.5"], s["recall@0.5"]) == (pytest.approx(1 / 3), pytest.approx(1 / 2))
    assert s["Dice"] == pytest.approx(2 * 6 / (8 + 10))
    assert im.matching(gt, pred)["TP"] == 1 and im.matching(gt, pred)["FP"] == 2


def test_one_detection_covering_two_nuclei():
    """Two touching 4 px nuclei, one 8 px detection over both (IoU 1/2 with each). AJI pairs it
    with both and counts its area twice; AJI+ pairs it once and adds the other nucleus to U;
    at IoU > 0.5 nothing matches; the pixels are all right, so Dice is 1."""
    gt = labels((1, 0, 2, 0, 2), (2, 0, 2, 2, 4))
    pred = labels((5, 0, 2, 0, 4))
    s = im.image_scores(gt, pred)
    assert s["AJI"] == pytest.approx((4 + 4) / (8 + 8))
    assert s["AJI+"] == pytest.approx(4 / (8 + 4))
    assert (s["PQ"], s["F1@0.5"], s["recall@0.5"]) == (0.0, 0.0, 0.0)
    assert s["Dice"] == 1.0


def test_empty_sides():
    gt = labels((1, 0, 2, 0, 2))
    none = np.zeros_like(gt)
    assert all(v == 0 for v in im.image_scores(gt, none).values())  # nothing found
    assert all(v == 0 for v in im.image_scores(none, gt).values())  # nothing to find, one found
    assert all(v == 1 for v in im.image_scores(none, none).values())  # nothing to find, nothing found
    assert im.matching(gt, none)["FN"] == 1 and im.matching(none, gt)["FP"] == 1


def test_perfect_and_relabelled():
    gt = labels((1, 0, 2, 0, 2), (2, 0, 2, 4, 6), (3, 3, 4, 0, 8))
    assert all(v == pytest.approx(1.0) for v in im.image_scores(gt, gt).values())
    pred = labels((70, 0, 2, 0, 3), (300, 0, 1, 4, 6), (9, 3, 4, 0, 2))  # any ids, any order
    same = labels((1, 0, 2, 0, 3), (2, 0, 1, 4, 6), (3, 3, 4, 0, 2))
    assert im.image_scores(gt, pred) == im.image_scores(gt, same)
    with pytest.raises(ValueError, match="one shape"):
        im.image_scores(gt, gt[:, :4])


def test_label_image_gives_shared_pixels_to_the_higher_score():
    a = labels((1, 0, 2, 0, 3)) > 0
    b = labels((1, 0, 2, 2, 5)) > 0
    c = labels((1, 3, 4, 6, 8)) > 0
    dets = Detections.from_masks(np.stack([a, b, c]), [0.6, 0.9, 0.3])
    lab = dets.label_image()
    assert lab.dtype == np.uint16
    np.testing.assert_array_equal(lab, labels((2, 0, 2, 0, 3), (1, 0, 2, 2, 5), (3, 3, 4, 6, 8)))
    np.testing.assert_array_equal(dets.label_image(min_score=0.5), np.where(lab == 3, 0, lab))
    assert not Detections.empty((4, 8)).label_image().any()


def test_score_images_averages_images_and_applies_the_score_threshold():
    gt = labels((1, 0, 2, 0, 2), (2, 0, 2, 4, 6))
    masks = np.stack([gt == 1, gt == 2, labels((1, 3, 4, 0, 8)) > 0])
    ground_truth = {"a": Detections.from_masks(masks[:2], [1, 1]), "b": Detections.from_masks(masks[:2], [1, 1])}
    preds = {"a": Detections.from_masks(masks, [0.9, 0.8, 0.2])}  # "b": nothing predicted
    scores = im.score_images(preds, ground_truth)
    mean, rows = scores.summary, scores.per_image
    assert [r["image_id"] for r in rows] == ["a", "b"] and rows[0]["nuclei"] == 2
    assert rows[0]["PQ"] == 1.0 and rows[1]["PQ"] == 0.0 and mean["PQ"] == 0.5  # the 0.2 one is dropped
    mean_all = im.score_images(preds, ground_truth, SegmentationRule(min_score=0.0)).summary
    assert mean_all["precision@0.5"] == pytest.approx((2 / 3 + 0) / 2)
    assert list(mean) == list(im.COLUMNS)
    assert "PQ=0.5000" in scores.format() and "score >= 0.5" in scores.format()
    assert rows[0]["found"] == 2 and rows[1]["found"] == 0
