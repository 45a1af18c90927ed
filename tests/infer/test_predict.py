"""Prediction with a real (tiny, demo-trained) Model Garden model: TTA mapping, cache, errors."""
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers.rle import rle_iou
from helpers.infer import predict
from helpers.infer.model import CheckpointNotFound
from helpers.train import checkpoints as ckpts


@pytest.fixture(scope="module")
def ws(demo_copy):
    # a copy of the README's demo run's workspace: its `all` stage has learned to find nuclei
    return demo_copy


def test_flipped_prediction_is_mapped_back(ws):
    from helpers.infer.model import load_model

    model, params = load_model(ws, "all", min_score=0.0)
    image = predict.load_image(ws, predict.image_ids_of(ws, "val")[0])
    via_tta = predict.predict_detections(model, params, image, "hflip", score_threshold=0.0)
    direct = predict.predict_detections(model, params, np.ascontiguousarray(image[:, ::-1]),
                                        score_threshold=0.0)
    assert len(via_tta) == len(direct) > 0
    back = direct.masks()[:, :, ::-1]
    np.testing.assert_array_equal(via_tta.masks(), back)
    assert via_tta.size == image.shape[:2]


def test_a_zoomed_view_is_the_image_enlarged_and_comes_back_in_its_frame(ws):
    """Multi-scale TTA: "zoom125" predicts as a stage whose input scale is 1.25x its own would
    (the model sees the image enlarged), with boxes and masks in the image's pixels."""
    import copy

    from helpers.infer.model import input_scale, load_model

    model, params = load_model(ws, "all", min_score=0.0)
    image = predict.load_image(ws, predict.image_ids_of(ws, "val")[0])
    zoomed = predict.predict_detections(model, params, image, "zoom125", score_threshold=0.0)
    bigger = copy.deepcopy(params)
    bigger.task.input_scale = 1.25 * input_scale(params)
    direct = predict.predict_detections(model, bigger, image, score_threshold=0.0)
    plain = predict.predict_detections(model, params, image, score_threshold=0.0)
    assert len(zoomed) == len(direct) > 0 and zoomed.size == plain.size == image.shape[:2]
    np.testing.assert_array_equal(zoomed.masks(), direct.masks())
    assert zoomed.rles != plain.rles  # another view, not the plain pass again
    # a stage's prediction takes it as a test-time augmentation, cached like the others
    image_id = predict.image_ids_of(ws, "val")[0]
    _, parts = predict.predict_stage(ws, "all", [image_id], tta=("zoom125",), name="zoomtest",
                                     score_threshold=0.0, progress=False, return_parts=True)
    np.testing.assert_array_equal(parts["zoom125"][image_id].masks(), zoomed.masks())


def test_predictions_are_cached_and_a_new_checkpoint_recomputes(ws, capsys):
    ids = predict.image_ids_of(ws, "val", "test")
    first = predict.predict_stage(ws, "all", ids, tta=("hflip",), name="cachetest", score_threshold=0.0,
                                  progress=False)
    assert f"({2 * len(ids)} computed, 0 from cache)" in capsys.readouterr().out
    for image_id, dets in first.items():
        assert dets.size == predict.load_image(ws, image_id).shape[:2]
        assert len(dets) > 0 and np.all((dets.scores >= 0) & (dets.scores <= 1))
    again = predict.predict_stage(ws, "all", ids, tta=("hflip",), name="cachetest", score_threshold=0.0,
                                  progress=False)
    assert f"(0 computed, {2 * len(ids)} from cache)" in capsys.readouterr().out
    for image_id in ids:
        assert again[image_id].rles == first[image_id].rles
    # an older checkpoint is another model state: its predictions are computed, not read
    older = ckpts.list_checkpoints(ws.checkpoints / "all")[-2][0]
    predict.predict_stage(ws, "all", ids[:1], name="cachetest", score_threshold=0.0, checkpoint=older,
                          progress=False)
    assert "(1 computed, 0 from cache)" in capsys.readouterr().out


def test_an_image_replaced_under_the_same_id_is_predicted_again(ws, capsys):
    """The cache is keyed by the image's own pixels (the shard index's sha256 of it), not only
    its id: notebook 01 run on a replaced image makes notebooks 04 and 05 predict it again."""
    import json

    from helpers.data import shards

    ids = predict.image_ids_of(ws, "val", "test")[:2]
    predict.predict_stage(ws, "all", ids, name="replaced", score_threshold=0.0, progress=False)
    index_path = ws.shards / shards.INDEX_NAME
    original = index_path.read_text()
    index = json.loads(original)
    entry = next(e for e in index["shards"] if e["image_id"] == ids[0])
    entry["image_sha256"] = "0" * 64  # what notebook 01 records for new pixels under the same id
    index_path.write_text(json.dumps(index))
    try:
        capsys.readouterr()
        predict.predict_stage(ws, "all", ids, name="replaced", score_threshold=0.0, progress=False)
        assert "(1 computed, 1 from cache)" in capsys.readouterr().out
    finally:
        index_path.write_text(original)


def test_an_unfinished_stage_is_used_only_on_purpose_and_a_foreign_checkpoint_never(ws, capsys):
    """A stage short of its planned steps is named as unfinished unless it is asked for
    (use_unfinished); a checkpoint beyond the plan (copied in) is refused, naming it."""
    import json

    from helpers.infer.model import StageUnfinished
    from helpers.train.stages import STAGE_FILE

    ids = predict.image_ids_of(ws, "val")[:1]
    record_path = ws.checkpoints / "all" / STAGE_FILE
    original = record_path.read_text()
    step, prefix = ckpts.latest_complete(ws.checkpoints / "all", repair=False)
    record = json.loads(original)
    try:
        record_path.write_text(json.dumps({**record, "planned_steps": step + 10}))
        with pytest.raises(StageUnfinished, match=f"stage 'all' is unfinished: .* step {step} of the {step + 10} "
                                                  "planned.*use_unfinished = True"):
            predict.predict_stage(ws, "all", ids, progress=False)
        predict.predict_stage(ws, "all", ids, progress=False, unfinished=True)
        assert f"predicting with ckpt-{step}, step {step} of {step + 10}" in capsys.readouterr().out
        record_path.write_text(original)
        foreign = [shutil.copy2(f, f.parent / f.name.replace(f"ckpt-{step}.", "ckpt-9999."))
                   for f in prefix.parent.glob(f"ckpt-{step}.*")]
        with pytest.raises(CheckpointNotFound, match=f"ckpt-9999 is step 9999, beyond the {step} steps stage 'all' "
                                                     "planned.*copied in"):
            predict.predict_stage(ws, "all", ids, progress=False)
    finally:
        record_path.write_text(original)
        for f in locals().get("foreign", []):
            Path(f).unlink()


def test_tiled_prediction_stays_in_the_image_and_has_no_doubles(ws):
    from helpers.infer.model import load_model

    model, params = load_model(ws, "all", min_score=0.0)
    image = predict.load_image(ws, predict.image_ids_of(ws, "val")[0])
    dets = predict.predict_detections(model, params, image, tile=160, overlap=64, score_threshold=0.0)
    assert dets.size == image.shape[:2] and len(dets) > 0
    x, y, w, h = dets.boxes.T
    assert (x >= 0).all() and (y >= 0).all() and (x + w <= image.shape[1]).all() and (y + h <= image.shape[0]).all()
    # a nucleus seen by two tiles is joined, not kept twice: the joined image has no more doubles
    # (masks at IoU >= 0.95, among detections at the workflow's score_threshold 0.05) than its
    # tiles have of their own (Model Garden's NMS compares boxes, not masks: a CI run found the
    # demo model's own pair at IoU 0.951 inside one tile)
    from helpers.infer.tiling import tile_grid

    def doubles(d):
        kept = d.subset(np.flatnonzero(d.scores >= 0.05))
        return int((np.triu(rle_iou(kept.rles, kept.rles), 1) >= 0.95).sum())

    own = sum(doubles(predict.predict_detections(model, params, image[y0:y1, x0:x1], score_threshold=0.0))
              for y0, x0, y1, x1 in tile_grid(*image.shape[:2], tile=160, overlap=64))
    assert doubles(dets) <= own


def test_ground_truth_comes_from_the_shards(ws):
    from helpers.data.shards import read_shard, select_shards

    val = predict.image_ids_of(ws, "val")
    gt = predict.shard_ground_truth(ws, val)
    rec = read_shard(select_shards(ws.shards, image_ids=val[:1], splits=None)[0])
    assert len(gt[val[0]]) == len(rec["masks"]) > 0
    with pytest.raises(predict.PredictionError, match="test image"):
        predict.shard_ground_truth(ws, predict.image_ids_of(ws, "test")[:1])


def test_bad_requests_are_clear_errors(ws, tmp_path):
    with pytest.raises(predict.PredictionError, match="not in .*index.json"):
        predict.predict_stage(ws, "all", ["TCGA-XX-NOPE-01Z-00-DX1"], progress=False)
    with pytest.raises(predict.PredictionError, match="unknown"):
        predict.predict_stage(ws, "all", predict.image_ids_of(ws, "val"), tta=("shear",), progress=False)
    with pytest.raises(CheckpointNotFound, match="has not been trained in this workspace"):
        empty = ws.checkpoints / "specialist-empty"
        empty.mkdir(exist_ok=True)
        try:
            predict.predict_stage(ws, "specialist-empty", predict.image_ids_of(ws, "val"), progress=False)
        finally:
            shutil.rmtree(empty)
