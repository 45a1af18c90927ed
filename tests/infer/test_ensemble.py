import numpy as np
import pytest

from helpers.detections import Detections
from helpers.rle import decode_rles, rle_iou
from helpers.infer.ensemble import (EnsembleError, RouteError, Router, Strategy, compare, default_strategies,
                              load_strategy, merge_detections, route, save_strategy)

H = W = 120
BREAST, PROSTATE, COLON = "TCGA-A7-D000-01Z-00-DX1", "TCGA-G9-D002-01Z-00-DX1", "TCGA-AY-D100-01Z-00-DX1"


def disk(cy, cx, r, size=(H, W)):
    yy, xx = np.mgrid[:size[0], :size[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def dets(masks, scores):
    return Detections.from_masks(np.stack(masks), scores)


def marker(value):
    """A one-mask Detections whose score identifies where it came from."""
    return dets([disk(10, 10, 3)], [value])


# ----------------------------------------------------------------------------- route
def test_route_by_organ_and_by_image():
    per_model = {"main": {i: marker(0.1) for i in (BREAST, PROSTATE, COLON)},
                 "colon": {COLON: marker(0.2)}, "prostate": {PROSTATE: marker(0.3), BREAST: marker(0.4)}}
    router = Router(default="main", by_organ={"colon": "colon", "prostate": "prostate"})
    out = route(per_model, router, [BREAST, PROSTATE, COLON])
    assert {i: float(d.scores[0]) for i, d in out.items()} == {BREAST: 0.1, PROSTATE: 0.3, COLON: 0.2}
    assert router.table([BREAST, COLON]) == {BREAST: "main", COLON: "colon"}
    # listing images wins over organ, plain dict tables work too
    router = Router(default="main", by_organ={"colon": "colon"}, by_image={BREAST: "prostate"})
    assert route(per_model, router, [BREAST])[BREAST].scores[0] == pytest.approx(0.4)
    out = route(per_model, {BREAST: "prostate", COLON: "colon"})
    assert {i: float(d.scores[0]) for i, d in out.items()} == {BREAST: 0.4, COLON: 0.2}


def test_route_with_manifest(tmp_path):
    from helpers.data.demo_data import make_demo_dataset
    from helpers.data.manifest import read_manifest

    root = make_demo_dataset(tmp_path / "d", n_train=3, n_test=1, size=64)
    rows = read_manifest(root / "data_manifest.csv")
    ids = [r["image_id"] for r in rows]
    organs = {r["image_id"]: r["organ"] for r in rows}
    target = sorted(set(organs.values()))[0]
    router = Router.from_manifest(rows, default="main", by_organ={target: "special"})
    per_model = {"main": {i: marker(0.1) for i in ids}, "special": {i: marker(0.9) for i in ids}}
    out = route(per_model, router, ids)
    for i in ids:
        assert out[i].scores[0] == pytest.approx(0.9 if organs[i] == target else 0.1)
    with pytest.raises(RouteError, match="organ"):
        Router.from_manifest(rows, default="main", by_organ={"spleen": "special"})
    with pytest.raises(RouteError, match="not in the manifest"):
        Router.from_manifest(rows, default="main", by_image={"TCGA-ZZ-0000-01Z-00-DX1": "special"})


def test_route_bad_tables():
    per_model = {"main": {BREAST: marker(0.1), PROSTATE: marker(0.1)}}
    with pytest.raises(RouteError, match="unknown model"):
        route(per_model, Router(default="main", by_organ={"colon": "colon-specialist"}), [BREAST])
    with pytest.raises(RouteError, match="unknown image"):
        route(per_model, Router(default="main", by_image={"TCGA-ZZ-0000": "main"}), [BREAST])
    with pytest.raises(RouteError, match="unknown organ"):
        route(per_model, Router(default="main", by_organ={"colonn": "main"}), [BREAST])
    with pytest.raises(RouteError, match="no prediction"):
        route(per_model, Router(default="main"), [COLON])
    with pytest.raises(RouteError, match="no default"):
        route(per_model, Router(by_organ={"breast": "main"}), [BREAST, PROSTATE])


# ----------------------------------------------------------------------------- merge
def two_models():
    """Model A and B both find nuclei 1-3 (B slightly shifted); 2 and 3 touch each other.
    Only A finds nucleus 4, only B nucleus 5."""
    n1, n2, n3 = disk(30, 30, 8), disk(70, 40, 8), disk(70, 57, 8)  # n2, n3 distinct neighbours
    n4, n5 = disk(100, 100, 6), disk(20, 95, 6)
    a = dets([n1, n2, n3, n4], [0.9, 0.8, 0.85, 0.6])
    b = dets([np.roll(n1, 1, 1), np.roll(n2, 1, 0), n3, n5], [0.7, 0.9, 0.8, 0.5])
    return a, b, [n1, n2, n3, n4, n5]


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
def test_compare_picks_best_and_allows_override():
    a, b, truth = two_models()
    gt = {"img": list(Detections.from_masks(np.stack(truth), [1] * 5).rles)}
    junk = dets([disk(60, 100, 5)], [0.99])
    per_model = {"A": {"img": a}, "B": {"img": b}, "bad": {"img": Detections.concat([junk, b.subset([3])])}}
    cmp = compare(per_model, gt, router=Router(default="A"), progress=False)
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
    by_pq = compare(per_model, gt, router=Router(default="A"), metric="PQ", progress=False)
    assert by_pq.metric == "PQ" and by_pq.rows[0]["PQ"] == max(r["PQ"] for r in by_pq.rows)
    with pytest.raises(ValueError, match="metric 'kind' unknown"):
        compare(per_model, gt, metric="kind", progress=False)
    assert cmp.choose("A").kind == "single" and cmp.strategy.name == "A"
    assert "<- chosen" in cmp.format()
    with pytest.raises(EnsembleError, match="choose one of"):
        cmp.choose("nope")
    # the chosen strategy replays on other (test) images
    test_preds = {"A": {"t": a}, "B": {"t": b}, "bad": {"t": a}}
    out = cmp.strategies[cmp.best].apply(test_preds)
    assert list(out) == ["t"] and len(out["t"]) == 5
    with pytest.raises(EnsembleError, match="no prediction"):
        Strategy("m", "merge", ("A", "B")).apply({"A": {"t": a}, "B": {}}, ["t"])
    assert [s.name for s in default_strategies(["A"])] == ["A"]


def test_strategy_saved_for_the_submission(tmp_path):
    a, b, _ = two_models()
    router = Router(default="A", by_organ={"colon": "B"}, by_image={BREAST: "B"})
    path = tmp_path / "choice.json"
    for s in [Strategy("route", "route", ("A", "B"), router=router),
              Strategy("merge-nms", "merge", ("A", "B"), method="nms", iou_threshold=0.4, max_dets=1000)]:
        save_strategy(s, path, overwrite=True)
        assert load_strategy(path) == s
    save_strategy(load_strategy(path), path)  # same choice again: fine
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_strategy(Strategy("A", "single", ("A",)), path)
    assert load_strategy(path).name == "merge-nms"
    with pytest.raises(EnsembleError, match="notebook 04"):
        load_strategy(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"name": "x"}')
    with pytest.raises(EnsembleError, match="not a saved ensemble strategy"):
        load_strategy(tmp_path / "bad.json")
