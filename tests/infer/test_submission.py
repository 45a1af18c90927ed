import copy
import json
import zipfile

import numpy as np
import pytest

from _answers import SIZE, A, B, boxes_dets, preds

from helpers.detections import Detections
from helpers.rle import decode_rles
from helpers.infer.submission import (SubmissionError, build_answer, check_answer, load_test_images, read_answer,
                                resolve_overlaps, validate_answer, write_answer)

def test_build_and_write_answer(test_ids, tmp_path):
    entries = build_answer(preds(), test_ids)
    assert [e["image_id"] for e in entries] == [7, 3, 3]  # order of test_img_ids.json
    assert entries[1]["bbox"] == [2.0, 2.0, 10.0, 8.0]
    assert all(e["category_id"] == 1 and isinstance(e["segmentation"]["counts"], str) for e in entries)
    files = write_answer(entries, tmp_path / "sub", test_ids)
    assert files.summary == {"entries": 3, "images": {f"{B}.png": 1, f"{A}.png": 2}}
    with zipfile.ZipFile(files.zip_path) as zf:
        assert zf.namelist() == ["answer.json"]
    assert read_answer(files.zip_path) == read_answer(files.json_path) == json.loads(json.dumps(entries))
    from pycocotools.coco import COCO

    gt = COCO()
    gt.dataset = {"images": [{"id": i, "height": SIZE[0], "width": SIZE[1]} for i in (3, 7)],
                  "categories": [{"id": 1, "name": "nucleus"}], "annotations": []}
    gt.createIndex()
    assert len(gt.loadRes(str(files.json_path)).getAnnIds()) == 3


def test_never_overwrites_unless_asked(test_ids, tmp_path):
    entries = build_answer(preds(), test_ids)
    files = write_answer(entries, tmp_path, test_ids)
    before = files.json_path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite = True in the parameters cell") as e:
        write_answer(entries[:2], tmp_path, test_ids)
    # what differs: 3 detections there, 2 new ones, both unchanged, one image with fewer
    assert "3 detections there, 2 now, 2 of them unchanged; the count differs on 1 image(s)" in str(e.value)
    assert files.json_path.read_bytes() == before
    write_answer(entries[:2], tmp_path, test_ids, overwrite=True)
    assert len(read_answer(files.zip_path)) == 2


def test_invalid_answer_is_not_written(test_ids, tmp_path):
    entries = build_answer(preds(), test_ids)
    entries[0]["score"] = 2.0
    with pytest.raises(SubmissionError, match=r"score must be a number in \[0, 1\]"):
        write_answer(entries, tmp_path, test_ids)
    assert not (tmp_path / "answer.json").exists() and not (tmp_path / "answer.zip").exists()


def test_bad_predictions(test_ids):
    with pytest.raises(SubmissionError, match="not in test_img_ids.json"):
        build_answer({**preds(), "TCGA-ZZ-0000-01Z-00-DX1": preds()[A]}, test_ids)
    with pytest.raises(SubmissionError, match=rf"no prediction for test image\(s\) \['{B}.png'\]"):
        build_answer({A: preds()[A]}, test_ids)
    assert len(build_answer({A: preds()[A]}, test_ids, allow_missing=True)) == 2
    with pytest.raises(SubmissionError, match="48x64"):
        build_answer({A: boxes_dets([(1, 1, 5, 5)], [0.5], size=(64, 64)), B: preds()[f"{B}.png"]}, test_ids)
    with pytest.raises(SubmissionError, match="predicted twice"):
        build_answer({**preds(), B: preds()[A]}, test_ids)


def _break(kind, entries):
    e = entries[1]
    if kind == "wrong_size":
        e["segmentation"]["size"] = [SIZE[0], SIZE[1] + 1]
    elif kind == "score_high":
        e["score"] = 1.01
    elif kind == "score_negative":
        e["score"] = -0.1
    elif kind == "score_nan":
        e["score"] = float("nan")
    elif kind == "score_text":
        e["score"] = "0.5"
    elif kind == "unknown_image":
        e["image_id"] = 99
    elif kind == "image_id_text":
        e["image_id"] = "3"
    elif kind == "category":
        e["category_id"] = 2
    elif kind == "missing_field":
        del e["segmentation"]
    elif kind == "counts_garbage":
        e["segmentation"]["counts"] = "\x7f\x7f"
    elif kind == "counts_wrong_total":
        other = Detections.from_masks(np.ones((1, SIZE[0], SIZE[1] + 1), bool), [1.0])
        e["segmentation"]["counts"] = other.rles[0]["counts"]  # runs add up to 48*65
    elif kind == "bbox_shape":
        e["bbox"] = [1, 2, 3]
    elif kind == "bbox_mismatch":
        e["bbox"] = [30.0, 30.0, 5.0, 5.0]
    elif kind == "not_a_dict":
        entries[1] = [1, 2]
    elif kind == "empty":
        return []
    elif kind == "not_a_list":
        return {"annotations": entries}
    return entries


MALFORMED = {"wrong_size": "does not match the image size", "score_high": "score", "score_negative": "score",
             "score_nan": "score", "score_text": "score", "unknown_image": "unknown image_id 99",
             "image_id_text": "image_id must be an integer", "category": "category_id must be 1",
             "missing_field": "missing field", "counts_garbage": "RLE alphabet", "counts_wrong_total": "cover",
             "bbox_shape": "bbox must be", "bbox_mismatch": "does not match its mask", "not_a_dict": "object",
             "empty": "pycocotools cannot load an empty results file", "not_a_list": "JSON list"}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_validator_rejects_each_malformed_kind(kind, test_ids):
    good = build_answer(preds(), test_ids)
    assert check_answer(good, test_ids) == []
    bad = _break(kind, copy.deepcopy(good))
    problems = check_answer(bad, test_ids)
    assert len(problems) == 1 and MALFORMED[kind] in problems[0], problems
    with pytest.raises(SubmissionError, match="invalid answer"):
        validate_answer(bad, test_ids)


def test_resolve_overlaps_gives_each_pixel_to_best_score():
    d = boxes_dets([(0, 0, 20, 20), (10, 10, 30, 30), (12, 12, 18, 18), (40, 40, 45, 45)],
                   [0.5, 0.9, 0.3, 0.2])
    r = resolve_overlaps(d)
    m = decode_rles(r.rles)
    assert r.scores.tolist() == [0.9, 0.5, 0.2]  # the 0.3 mask lies inside the 0.9 one -> empty, dropped
    assert m.sum(axis=0).max() == 1
    assert m[0].sum() == 400 and m[1].sum() == 400 - 100 and m[1, 15, 15] == 0
    entries = build_answer({A: d, B: d}, [*load_test_images(SPEC_LIST)], resolve=True)
    assert len(entries) == 6


SPEC_LIST = [{"file_name": f"{A}.png", "id": 1, "height": SIZE[0], "width": SIZE[1]},
             {"file_name": f"{B}.png", "id": 2, "height": SIZE[0], "width": SIZE[1]}]


def test_load_test_images_sources(test_ids, tmp_path):
    imgs = load_test_images(test_ids)
    assert [(t.image_id, t.coco_id) for t in imgs] == [(B, 7), (A, 3)]
    assert load_test_images(test_ids.parent) == imgs
    with pytest.raises(SubmissionError, match="not found"):
        load_test_images(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [{"file_name": "x.png"}]}')
    with pytest.raises(SubmissionError, match="needs file_name, id, height and width"):
        load_test_images(bad)


@pytest.mark.realdata
def test_real_test_img_ids(real_data):
    imgs = load_test_images(real_data / "test_img_ids.json")
    assert len(imgs) == 6 and all((t.height, t.width) == (1000, 1000) for t in imgs)
    assert {t.file_name for t in imgs} == {p.name for p in (real_data / "test").glob("*.png")}
    from helpers.data.dataset import open_dataset

    assert load_test_images(open_dataset(real_data)) == imgs


def test_evaluation_side_of_the_workflow_on_demo_data(tmp_path, workspace):
    """What notebooks 04 and 05 do, with stand-in model outputs: cache per model, compare
    on the validation split, record the choice, apply it to the test images, submit."""
    from helpers.data.dataset import open_dataset, read_image
    from helpers.data.demo_data import make_demo_dataset
    from helpers.infer.choice import Choice, load_choice, save_choice
    from helpers.infer.routing import Router
    from helpers.infer.strategy import compare_strategies
    from _ground_truth import load_ground_truth
    from helpers.data.manifest import read_manifest, split_ids
    from helpers.infer.overlays import prediction_overlay, score_histogram
    from helpers.infer.prediction_cache import PredictionCache

    root = make_demo_dataset(tmp_path / "demo", n_train=4, n_test=2, size=128)
    ds = open_dataset(root)
    rows = read_manifest(root / "data_manifest.csv")
    val = split_ids(rows, "val") or [ds.train_ids[0]]
    gt = load_ground_truth(ds, val, progress=False)
    rng = np.random.default_rng(0)
    cache = PredictionCache(workspace.predictions)

    def fake_model(image_id, quality):
        if image_id in gt and quality == "good":
            rles = gt[image_id]
            return Detections(rles, rng.uniform(0.5, 1.0, len(rles)), rles[0]["size"])
        size = (128, 128)
        m = np.zeros((5,) + size, bool)
        for k in range(5):
            y, x = rng.integers(0, 110, 2)
            m[k, y:y + 12, x:x + 12] = True
        return Detections.from_masks(m, rng.uniform(0, 1, 5))

    images = val + ds.test_ids
    for model, quality in (("all", "good"), ("heads", "bad")):
        for image_id in images:
            cache.get_or_compute((model, image_id), lambda: fake_model(image_id, quality))
    per_model = cache.load_all_predictions(["all", "heads"], images)

    cmp = compare_strategies({m: {i: p[i] for i in val} for m, p in per_model.items()}, gt,
                  router=Router.from_manifest(rows, default="heads"), progress=False)
    assert cmp.rows[0]["AP@100"] == pytest.approx(1.0) and cmp.best == "all"
    save_choice(workspace.predictions, Choice(cmp.strategy, {"all": "all", "heads": "heads"}))

    test_preds = load_choice(workspace.predictions).strategy.apply(per_model, ds.test_ids)
    entries = build_answer(test_preds, ds, resolve=True)
    files = write_answer(entries, workspace.submission, ds)
    assert set(files.summary["images"]) == {it.file_name for it in ds.test}
    assert validate_answer(read_answer(files.zip_path), root / "test_img_ids.json")["entries"] == len(entries)
    item = ds.test[0]
    fig = prediction_overlay(read_image(item.image_path), test_preds[item.image_id], title=item.file_name)
    assert "5 detections" in fig._suptitle.get_text()
    score_histogram(test_preds)


def test_an_unreadable_answer_in_the_way_is_named_not_a_type_error(test_ids, tmp_path):
    entries = build_answer(preds(), test_ids)
    (tmp_path / "answer.json").write_text('{"not": "a list of entries"}')
    with pytest.raises(FileExistsError, match=r"another answer \(the existing one cannot be read\)"):
        write_answer(entries, tmp_path, test_ids)
