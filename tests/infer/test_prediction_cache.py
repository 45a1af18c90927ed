import json
import warnings

import numpy as np
import pytest

from helpers.detections import Detections
from helpers.infer.prediction_cache import CacheError, CacheKey, PredictionCache

IMG = "TCGA-A7-D000-01Z-00-DX1"


def dets(seed=0, n=5):
    rng = np.random.default_rng(seed)
    m = np.zeros((n, 32, 32), bool)
    for i in range(n):
        y, x = rng.integers(0, 26, 2)
        m[i, y:y + 6, x:x + 6] = True
    return Detections.from_masks(m, rng.random(n))


class Counter:
    def __init__(self, value):
        self.value, self.calls = value, 0

    def __call__(self):
        self.calls += 1
        return self.value


def test_layout_and_round_trip(workspace):
    cache = PredictionCache(workspace.predictions)
    d = dets()
    assert cache.path(("main", IMG)) == workspace.predictions / "main" / f"{IMG}.json"
    assert cache.path(("main", IMG, "hflip")) == workspace.predictions / "main" / f"{IMG}.hflip.json"
    assert not cache.has(("main", IMG))
    cache.save(("main", IMG), d, meta={"checkpoint": "ckpt-3"})
    cache.save(CacheKey("main", IMG, "hflip"), dets(1))
    back = cache.load(("main", IMG))
    assert back.rles == d.rles and np.allclose(back.scores, d.scores)
    stored = json.loads(cache.path(("main", IMG)).read_text())
    assert len(stored["boxes"]) == 5 and stored["meta"] == {"checkpoint": "ckpt-3"}
    assert sorted((k.image_id, k.tta or "") for k in cache.keys("main")) == [(IMG, ""), (IMG, "hflip")]
    assert cache.models() == ["main"]
    assert cache.load_predictions("main")[IMG].rles == d.rles


def test_get_or_compute_computes_once(workspace):
    cache = PredictionCache(workspace.predictions)
    fn = Counter(dets())
    first = cache.get_or_compute(("main", IMG, "rot90"), fn)
    second = cache.get_or_compute(("main", IMG, "rot90"), fn)
    assert fn.calls == 1
    assert second.rles == first.rles
    # a new process (new cache object) doesn't recompute either
    assert PredictionCache(workspace.predictions).get_or_compute(("main", IMG, "rot90"), fn).rles == first.rles
    assert fn.calls == 1


@pytest.mark.parametrize("damage", ["truncate", "bad_rle", "count_mismatch", "wrong_image", "not_json"])
def test_corrupt_file_is_detected_and_recomputed(workspace, damage):
    cache = PredictionCache(workspace.predictions)
    key = ("main", IMG)
    path = cache.save(key, dets())
    text = path.read_text()
    obj = json.loads(text)
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "bad_rle":
        obj["counts"][0] = obj["counts"][0][:-2]
        path.write_text(json.dumps(obj))
    elif damage == "count_mismatch":
        obj["scores"] = obj["scores"][:-1]
        path.write_text(json.dumps(obj))
    elif damage == "wrong_image":
        obj["image_id"] = "other"
        path.write_text(json.dumps(obj))
    else:
        path.write_bytes(b"\x00\xff")
    assert not cache.has(key)
    with pytest.raises(CacheError, match="corrupt cache file"):
        cache.load(key)
    fresh = dets(7)
    fn = Counter(fresh)
    with pytest.warns(UserWarning, match="recomputing"):
        got = cache.get_or_compute(key, fn)
    assert fn.calls == 1 and got.rles == fresh.rles
    assert cache.has(key) and cache.load(key).rles == fresh.rles


def test_stale_meta_is_recomputed(workspace):
    cache = PredictionCache(workspace.predictions)
    key = ("main", IMG)
    cache.save(key, dets(), meta={"checkpoint": "ckpt-1"})
    assert cache.has(key, meta={"checkpoint": "ckpt-1"})
    assert not cache.has(key, meta={"checkpoint": "ckpt-2"})
    fn = Counter(dets(3))
    with pytest.warns(UserWarning, match="stale"):
        cache.get_or_compute(key, fn, meta={"checkpoint": "ckpt-2"})
    assert fn.calls == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache.get_or_compute(key, fn, meta={"checkpoint": "ckpt-2"})
    assert fn.calls == 1
    with pytest.raises(CacheError, match="stale.*another model name"):
        cache.get_or_compute(key, fn, meta={"checkpoint": "ckpt-3"}, on_stale="error")
    assert fn.calls == 1 and cache.has(key, meta={"checkpoint": "ckpt-2"})
    assert cache.load_all_predictions(["main"], [IMG])["main"][IMG].rles == fn.value.rles


def test_partial_files_are_ignored_and_names_checked(workspace):
    cache = PredictionCache(workspace.predictions)
    cache.save(("main", IMG), dets())
    (workspace.predictions / "main" / f".{IMG}.json.abc.partial").write_text("{")
    assert [k.image_id for k in cache.keys("main")] == [IMG]
    with pytest.raises(ValueError, match="no dots"):
        CacheKey("main", IMG, "h.flip")
    with pytest.raises(ValueError, match="folder name"):
        CacheKey("../x", IMG)
    with pytest.raises(CacheError, match="no cached prediction"):
        cache.load(("main", "TCGA-XX-0000"))
