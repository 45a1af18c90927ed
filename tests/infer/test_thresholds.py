"""Notebook 04's choice of the exports' segmentation rule on validation."""
import numpy as np
import pytest

from helpers.detections import Detections
from helpers.infer import thresholds
from helpers.infer.segmentation import SegmentationRule


def _grid_masks(size=(64, 64), n=16, side=8, shift=0):
    masks = np.zeros((n,) + size, bool)
    for i in range(n):
        y, x = 4 + 15 * (i // 4) + shift, 4 + 15 * (i % 4) + shift
        masks[i, y:y + side, x:x + side] = True
    return masks


def _split(seed=0):
    """Four images of 16 nuclei each: the model finds every nucleus (scores 0.3-0.95) and makes
    8 false detections per image (scores 0.05-0.25), plus a shifted duplicate of 4 nuclei."""
    rng = np.random.default_rng(seed)
    truth, preds = {}, {}
    for k in range(4):
        gt = _grid_masks()
        false = _grid_masks(n=8, side=5, shift=9)  # in the gaps between the nuclei
        dup = np.roll(gt[:4], 3, axis=2)
        masks = np.concatenate([gt, false, dup])
        scores = np.concatenate([rng.uniform(0.3, 0.95, 16), rng.uniform(0.05, 0.25, 8), rng.uniform(0.3, 0.5, 4)])
        truth[f"img{k}"] = Detections.from_masks(gt, np.ones(16))
        preds[f"img{k}"] = Detections.from_masks(masks, scores)
    return preds, truth


def test_the_threshold_is_chosen_where_the_metric_is_best():
    preds, truth = _split()
    chosen = thresholds.choose_rule(preds, truth, "PQ")
    assert 0.25 <= chosen.rule.min_score <= 0.3  # every nucleus kept, every false one dropped
    best = max(r["PQ"] for r in chosen.curve)
    assert chosen.summary["PQ"] >= best - thresholds.TOLERANCE
    at_half = next(r for r in chosen.curve if r["min_score"] == 0.5)
    assert at_half["PQ"] < chosen.summary["PQ"] and at_half["worst kept"] < 1.0
    assert [r["min_score"] for r in chosen.curve] == list(thresholds.THRESHOLDS)
    assert chosen.summary["worst kept"] == 1.0
    assert [r["image_id"] for r in chosen.per_image] == sorted(preds)
    assert all(r["found"] == 16 for r in chosen.per_image)


def test_on_a_flat_top_the_threshold_that_keeps_the_most_nuclei_wins():
    curve = [{"min_score": 0.2, "PQ": 0.500, "kept": 0.9}, {"min_score": 0.3, "PQ": 0.503, "kept": 0.8},
             {"min_score": 0.1, "PQ": 0.490, "kept": 1.0}]
    assert thresholds._pick(curve, "PQ")["min_score"] == 0.2  # within the tolerance of the best
    assert thresholds._pick(curve, "PQ", tolerance=0.0)["min_score"] == 0.3


def test_a_duplicates_remains_are_cut_when_validation_says_so():
    """The shifted duplicates keep a 3 px wide strip each after the better masks take theirs:
    false nuclei, so a min_kept above 3/8 scores higher than keeping every piece."""
    preds, truth = _split()
    chosen = thresholds.choose_rule(preds, truth, "PQ")
    by_kept = {r["min_kept"]: r["PQ"] for r in chosen.cuts if r["min_area"] == 0}
    assert by_kept[0.5] > by_kept[0.0] and chosen.rule.min_kept >= 0.5
    assert chosen.summary["PQ"] == max(r["PQ"] for r in chosen.cuts)


def test_a_fixed_threshold_and_other_metrics():
    preds, truth = _split()
    fixed = thresholds.choose_rule(preds, truth, "AJI", fixed=0.6)
    assert fixed.rule.min_score == 0.6 and fixed.metric == "AJI"
    assert fixed.summary["kept"] < 1.0
    text = fixed.format()
    assert "threshold curve" in text and "chosen by AJI" in text and "img3" in text
    fig = fixed.figure()
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="exports are chosen by"):
        thresholds.choose_rule(preds, truth, "AP50@100")


def test_an_image_without_predictions_counts_as_nothing_found():
    preds, truth = _split()
    del preds["img0"]
    chosen = thresholds.choose_rule(preds, truth, "F1@0.5", thresholds=[0.3, 0.5])
    assert chosen.per_image[0]["found"] == 0 and chosen.per_image[0]["F1@0.5"] == 0.0
    assert isinstance(chosen.rule, SegmentationRule) and chosen.curve[0]["worst kept"] == 0.0


def test_rule_kinds_are_judged_on_images_they_were_not_chosen_on():
    """One image scored as on unfamiliar tissue (every score x 0.3): chosen on the other three,
    an absolute threshold drops many of its nuclei, a threshold relative to the image's own
    scores keeps them."""
    preds, truth = _split()
    preds["img3"] = preds["img3"].with_scores(preds["img3"].scores * 0.3)
    families = thresholds.rule_families()
    out = thresholds.compare_rule_families(preds, truth, "PQ", {k: families[k] for k in ("absolute", "relative")},
                                           protocols={"loo": None, "unseen": (["img0", "img1", "img2"], ["img3"])})
    loo, unseen = ({r["rule"]: r for r in out[p]} for p in ("loo", "unseen"))
    assert [h["image_id"] for h in loo["absolute"]["per image"]] == sorted(preds)
    assert [h["image_id"] for h in unseen["absolute"]["per image"]] == ["img3"]
    assert unseen["absolute"]["kept"] < 0.75 and unseen["relative"]["kept"] > 0.9
    assert unseen["relative"]["PQ"] > unseen["absolute"]["PQ"] + 0.2
    assert loo["relative"]["worst PQ"] > loo["absolute"]["worst PQ"]
    assert "score >= " in unseen["absolute"]["chosen on all"]
