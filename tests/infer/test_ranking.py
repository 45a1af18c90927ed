"""The learned ranking (helpers.infer.ranking) through rescore's comparison and the choice record."""
import numpy as np
import pytest

from helpers.detections import Detections
from helpers.infer import ranking, rescore
from helpers.infer.choice import Choice, load_choice, load_ranker, save_choice
from helpers.infer.strategy import Single

H = W = 200


def disk(cy, cx, r):
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def image(seed: int, n_real: int = 80):
    """121 grid cells: ``n_real`` hold a nucleus (a disk) found by the model, the rest a false
    detection shaped like a crescent (not convex). The classifier's scores are noise, so only
    the shape tells them apart. Returns (predictions, ground truth)."""
    rng = np.random.default_rng(seed)
    cells = [(12 + 16 * (k // 11), 12 + 16 * (k % 11)) for k in range(121)]
    real = set(rng.choice(121, n_real, replace=False).tolist())
    masks = [disk(cy, cx, 6) if k in real else disk(cy, cx, 6) & ~disk(cy - 3, cx + 2, 5)
             for k, (cy, cx) in enumerate(cells)]
    preds = Detections.from_masks(np.stack(masks), rng.uniform(0.3, 1.0, 121))
    gt = Detections.from_masks(np.stack([disk(cy, cx, 6) for k, (cy, cx) in enumerate(cells) if k in real]),
                               np.ones(n_real))
    return preds, gt


@pytest.fixture(scope="module")
def split():
    pairs = {f"img{k}": image(k) for k in range(4)}
    return {i: p for i, (p, _) in pairs.items()}, {i: g for i, (_, g) in pairs.items()}


def test_features_see_shape_and_duplicates():
    preds, _ = image(0)
    X = ranking.features(preds)
    col = {f: k for k, f in enumerate(ranking.FEATURES)}
    assert X.shape == (121, len(ranking.FEATURES))
    assert np.isnan(X[:, col["agreement"]]).all() and np.isnan(X[:, col["mask"]]).all()
    convex = X[:, col["solidity"]] > 0.9
    assert 60 <= convex.sum() <= 90  # the disks, not the crescents
    assert (X[:, col["overlap"]] == 0).all()  # no two detections overlap
    twice = Detections.concat([preds, preds.with_scores(preds.scores * 0.5)])
    over = ranking.features(twice)[:, col["overlap"]]
    np.testing.assert_allclose(over[121:], 1.0)  # each weaker copy duplicates a stronger one
    assert (over[:121] == 0).all()


def test_learned_ranking_wins_on_validation_without_seeing_the_image_it_scores(split):
    preds, gt = split
    cmp = rescore.compare_recipes(preds, gt, recipes=["learned-match50", "learned-iou", "border"])
    rows = {r["recipe"]: r for r in cmp.rows}
    assert cmp.metric == "AP50@100"
    assert rows["learned-match50"]["AP50@100"] > rows["none"]["AP50@100"] + 0.1
    assert cmp.chosen.startswith("learned-")
    # leave-one-image-out: an image's scores do not depend on its own labels ...
    X, match = cmp.learning_rows
    loo = ranking.leave_one_image_out("match50", X, match)
    flipped = dict(match, img0=1.0 - match["img0"])
    loo2 = ranking.leave_one_image_out("match50", X, flipped)
    np.testing.assert_array_equal(loo["img0"], loo2["img0"])
    # ... but they do depend on the other images' labels
    assert not np.allclose(loo["img1"], loo2["img1"])
    # and the validation predictions notebook 04 shows are those leave-one-out scores
    cmp.chosen = "learned-match50"
    shown = cmp.on_validation(preds)
    np.testing.assert_array_equal(shown["img0"].scores, np.sort(loo["img0"])[::-1])


def test_the_chosen_ranking_is_stored_and_reapplied(split, tmp_path):
    preds, gt = split
    cmp = rescore.compare_recipes(preds, gt, recipes=["learned-match50"], choice="learned-match50")
    save_choice(tmp_path, Choice(Single("A", ("A",)), {"A": "all"}, rescore.RECIPES[cmp.chosen]), cmp.ranker())
    assert (tmp_path / ranking.RANKING_FILE).is_file()
    recipe = load_choice(tmp_path).recipe
    assert recipe == rescore.RECIPES["learned-match50"] and recipe.needs_passes
    new, _ = image(99)  # a "test" image
    fitted = cmp.ranker().rescore(new)
    again = rescore.apply(recipe, new, ranker=load_ranker(tmp_path, recipe))
    np.testing.assert_array_equal(again.scores, fitted.scores)
    assert again.rles == fitted.rles
    # it reorders: the disks come first
    top = again.top(60)
    col = ranking.FEATURES.index("solidity")
    assert (ranking.features(top)[:, col] > 0.9).mean() > 0.95
    assert (ranking.features(new.sorted().top(60))[:, col] > 0.9).mean() < 0.9
    with pytest.raises(rescore.RescoreError, match="ranking.npz"):
        rescore.apply(recipe, new)
    (tmp_path / ranking.RANKING_FILE).write_bytes(b"garbage")
    with pytest.raises(ranking.RankingError, match="ranking.npz.*notebook 04"):
        load_ranker(tmp_path, recipe)


def test_leave_one_out_needs_two_images(split):
    preds, gt = split
    one = {"img0": preds["img0"]}
    cmp = rescore.compare_recipes(one, {"img0": gt["img0"]}, recipes=["learned-match50"])
    assert [r["recipe"] for r in cmp.rows] == ["none"]  # too few images: the recipe is left out
