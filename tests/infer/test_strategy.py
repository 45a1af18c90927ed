import numpy as np
import pytest

from helpers.detections import Detections
from helpers.infer.routing import Router
from helpers.infer.strategy import (EnsembleError, Merge, Route, Single, compare_strategies, default_strategies,
                                    strategy_from_json)

from _masks import BREAST, dets, disk, two_models


def test_compare_picks_best_and_allows_override():
    a, b, truth = two_models()
    gt = {"img": list(Detections.from_masks(np.stack(truth), [1] * 5).rles)}
    junk = dets([disk(60, 100, 5)], [0.99])
    per_model = {"A": {"img": a}, "B": {"img": b}, "bad": {"img": Detections.concat([junk, b.subset([3])])}}
    cmp = compare_strategies(per_model, gt, router=Router(default="A"), progress=False)
    names = [r["strategy"] for r in cmp.rows]
    assert set(names) == {"A", "B", "bad", "route", "merge-nms", "merge-wmf"}
    assert cmp.best.startswith("merge") and cmp.chosen == cmp.best  # only merge finds all 5
    assert cmp.rows[-1]["strategy"] == "bad"
    # the field's metrics score the segmentation of detections scoring >= 0.5: A finds 4 of 5
    # (F1 8/9); "bad" 1 of 5 and a false one (2/7); a merge's score is the mean over its 2
    # sources, so nuclei 4 and 5, found by one model each (0.6, 0.5), fall below 0.5 (6/8)
    f1 = {r["strategy"]: r["F1@0.5"] for r in cmp.rows}
    assert f1["A"] == pytest.approx(8 / 9) and f1["bad"] == pytest.approx(2 / 7)
    assert f1["merge-wmf"] == pytest.approx(6 / 8) and "AJI" in cmp.format()
    by_pq = compare_strategies(per_model, gt, router=Router(default="A"), metric="PQ", progress=False)
    assert by_pq.metric == "PQ" and by_pq.rows[0]["PQ"] == max(r["PQ"] for r in by_pq.rows)
    with pytest.raises(ValueError, match="metric 'kind' unknown"):
        compare_strategies(per_model, gt, metric="kind", progress=False)
    assert cmp.choose("A").kind == "single" and cmp.strategy.name == "A"
    assert "<- chosen" in cmp.format()
    with pytest.raises(EnsembleError, match="choose one of"):
        cmp.choose("nope")
    # the chosen strategy replays on other (test) images
    test_preds = {"A": {"t": a}, "B": {"t": b}, "bad": {"t": a}}
    out = cmp.strategies[cmp.best].apply(test_preds)
    assert list(out) == ["t"] and len(out["t"]) == 5
    with pytest.raises(EnsembleError, match="no prediction"):
        Merge("m", ("A", "B")).apply({"A": {"t": a}, "B": {}}, ["t"])
    assert [s.name for s in default_strategies(["A"])] == ["A"]


def test_each_kind_is_a_class_and_round_trips_through_json():
    router = Router(default="A", by_organ={"colon": "B"}, by_image={BREAST: "B"})
    kinds = [Single("A", ("A",)), Route("route", ("A", "B"), router=router),
             Merge("merge-nms", ("A", "B"), method="nms", iou_threshold=0.4, max_dets=1000)]
    assert [s.kind for s in kinds] == ["single", "route", "merge"]
    for s in kinds:
        obj = s.to_json()
        assert obj["kind"] == s.kind and strategy_from_json(obj) == s
        assert type(strategy_from_json(obj)) is type(s)
    assert [type(s) for s in default_strategies(["A", "B"], router)] == [Single, Single, Route, Merge, Merge]
    with pytest.raises(EnsembleError, match="one model"):
        Single("AB", ("A", "B"))
    with pytest.raises(EnsembleError, match="merge method 'mean' unknown"):
        Merge("m", ("A", "B"), method="mean")
    for bad in ({"name": "x"}, {"kind": "vote", "name": "x", "models": ["A"]}, {"kind": "route", "name": "r",
                                                                               "models": ["A"]}):
        with pytest.raises(EnsembleError, match="not a saved ensemble strategy"):
            strategy_from_json(bad)


def test_a_metric_undefined_on_validation_chooses_nothing():
    """Validation images without a nucleus leave COCO AP undefined (nan): nothing is chosen by it."""
    from helpers.infer import selection

    a, b, _ = two_models()
    per_model = {"A": {"img": a}, "B": {"img": b}}
    cmp = compare_strategies(per_model, {"img": []}, router=Router(default="A"), progress=False)
    assert np.isnan(cmp.rows[0]["AP50@100"])
    with pytest.raises(ValueError, match=r"AP50@100 is undefined \(nan\) .* no nucleus .*nothing was saved"):
        selection.choose(cmp)
