import pytest

from helpers.infer.routing import RouteError, Router, route

from _masks import BREAST, COLON, PROSTATE, marker


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
