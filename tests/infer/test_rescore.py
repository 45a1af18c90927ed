"""Leaderboard-aware rescoring (helpers.infer.rescore) and the split's AP ceiling."""
import numpy as np
import pytest

from helpers.detections import Detections
from helpers.infer import rescore
from helpers.infer.fusion import merge_detections
from helpers.infer.evaluate import ceiling, evaluate
from helpers.infer.tta import invert_tta, transform_detections

H = W = 200


def disk(cy, cx, r):
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def grid(n, r=5, step=16):
    """n disjoint disks on a grid, inside the image."""
    centres = [(12 + step * (k // 11), 12 + step * (k % 11)) for k in range(n)]
    return [disk(cy, cx, r) for cy, cx in centres]


def test_mask_scores_travel_with_the_masks():
    d = Detections.from_masks(np.stack(grid(3)), [0.9, 0.5, 0.7])
    d = d.with_scores(d.scores, mask_scores=[0.1, 0.2, 0.3])
    assert list(d.sorted().mask_scores) == [0.1, 0.3, 0.2]
    back = Detections.from_json(d.to_json())
    np.testing.assert_allclose(back.mask_scores, [0.1, 0.2, 0.3])
    assert Detections.concat([d, d]).mask_scores.tolist() == [0.1, 0.2, 0.3] * 2
    np.testing.assert_allclose(invert_tta(transform_detections(d, "hflip"), "hflip").mask_scores,
                               [0.1, 0.2, 0.3])
    merged = merge_detections([d, d], "wmf")
    assert sorted(merged.mask_scores.tolist()) == pytest.approx([0.1, 0.2, 0.3])
    # a part without mask scores: the merge has none (no made-up values)
    plain = Detections.from_masks(np.stack(grid(3)), [0.9, 0.5, 0.7])
    assert merge_detections([d, plain], "nms").mask_scores is None
    with pytest.raises(ValueError, match="mask scores"):
        Detections(d.rles, d.scores, d.size, mask_scores=[0.5])


def test_mask_confidence_of_model_garden_masks():
    from helpers.infer.model import detections_from_model_garden

    box_masks = np.zeros((2, 28, 28), np.float32)
    box_masks[0, 4:24, 4:24] = 0.95
    box_masks[1, 4:24, 4:24] = 0.6
    d = detections_from_model_garden(box_masks, np.array([[10, 10, 40, 40], [60, 60, 90, 90]]),
                                     np.array([0.8, 0.7]), (H, W))
    np.testing.assert_allclose(d.mask_scores, [0.95, 0.6], atol=1e-6)


def test_agreement_and_border_signals():
    masks = grid(3)
    masks[2] = disk(5, 100, 8)  # cut by the top border
    d = Detections.from_masks(np.stack(masks), [0.9, 0.8, 0.7])
    both = Detections.from_masks(np.stack(masks[:2]), [0.9, 0.8])
    first = Detections.from_masks(np.stack(masks[:1]), [0.9])
    a = rescore.agreement(d, [both, first])
    np.testing.assert_allclose(a, [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(rescore.at_border(d), [0, 0, 1])
    with pytest.raises(rescore.RescoreError, match="passes"):
        rescore.apply("agreement", d)


def test_rescoring_reorders_by_the_recipe():
    d = Detections.from_masks(np.stack(grid(3)), [0.9, 0.8, 0.7])
    d = d.with_scores(d.scores, mask_scores=[0.2, 0.9, 0.9])
    out = rescore.apply("mask", d)
    np.testing.assert_allclose(out.scores, [0.72, 0.63, 0.18])
    assert rescore.at_border(out).sum() == 0
    agree_pass = Detections.from_masks(np.stack(grid(3)[2:]), [0.5])  # only the third
    out = rescore.apply("agreement", d, [agree_pass])
    assert out.scores[0] == pytest.approx(0.7) and out.scores[1:].tolist() == [0.0, 0.0]
    with pytest.raises(rescore.RescoreError, match="mask scores"):
        rescore.apply("mask", Detections.from_masks(np.stack(grid(2)), [0.5, 0.4]))
    # an image without detections has every signal: nothing to rescore, no error
    empty = merge_detections([Detections.empty((H, W))] * 2, "wmf")
    assert len(rescore.apply("agreement+mask", empty, [empty])) == 0
    assert Detections.concat([d, Detections.empty((H, W))]).mask_scores is not None


def test_compare_keeps_a_recipe_only_when_it_wins_at_100_detections():
    """150 real nuclei and 150 false ones per image; the classifier ranks the false ones first,
    the passes agree only on the real ones: agreement wins AP@100, the plain score does not."""
    real = grid(121, r=4)[:121]
    gt = {"a": Detections.from_masks(np.stack(real), np.ones(len(real)))}
    false = [np.roll(m, 7, axis=1) & ~np.any(np.stack(real), 0) for m in real]
    masks = np.stack(real + false)
    scores = np.r_[np.full(len(real), 0.5), np.full(len(false), 0.9)]
    preds = {"a": Detections.from_masks(masks, scores)}
    passes = {"a": [Detections.from_masks(np.stack(real), np.ones(len(real)))] * 2}
    cmp = rescore.compare_recipes(preds, gt, passes, recipes=["agreement", "border"])
    rows = {r["recipe"]: r for r in cmp.rows}
    assert rows["agreement"]["AP@100"] > rows["none"]["AP@100"] + 0.3
    assert cmp.chosen == "agreement" and "AP@100" in cmp.format()
    assert "mask" not in rows  # the predictions carry no mask scores: that recipe cannot run
    assert cmp.ceiling["AP@100"] == pytest.approx(ceiling(gt)["AP@100"])
    # nothing beats the plain score: "none" stays
    good = {"a": Detections.from_masks(np.stack(real), np.ones(len(real)))}
    assert rescore.compare_recipes(good, gt, passes, recipes=["agreement"]).chosen == "none"


def test_ceiling_is_what_perfect_masks_score():
    few = grid(50)
    many = grid(121, r=4)
    gt = {"few": Detections.from_masks(np.stack(few), np.ones(50)),
          "many": Detections.from_masks(np.stack(many), np.ones(121))}
    top = ceiling(gt)
    assert top["AP@1000"] == pytest.approx(1.0)
    assert ceiling({"few": gt["few"]})["AP@100"] == pytest.approx(1.0)
    # 100 of 121 nuclei can match in one image: recall tops out below 1, so AP@100 < 1
    assert 0.5 < top["AP@100"] < 0.95
    perfect = evaluate(gt, gt, per_image=False).summary
    assert perfect["AP@100"] == pytest.approx(top["AP@100"])
