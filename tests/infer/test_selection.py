"""Notebook 05's glue: the final model stands in for `all`, cached apart from it."""
import shutil

import pytest

from helpers.infer import selection
from helpers.infer.choice import Choice, load_choice, save_choice
from helpers.infer.strategy import Single, StrategyComparison
from helpers.train import training
from helpers.train.stages import Stage
from helpers.workspace import get_workspace


def test_final_model_needs_a_finished_final_stage(demo_workflow):
    with pytest.raises(ValueError, match="stage = 'final'"):
        selection.chosen_test_predictions(demo_workflow, None, progress=False, use_final=True)


def test_final_model_predicts_the_test_images_in_place_of_all(demo_workflow, tmp_path):
    ws = get_workspace(tmp_path / "ws")
    for sub in ("data", "shards", "checkpoints", "predictions"):
        shutil.rmtree(ws.root / sub, ignore_errors=True)
        shutil.copytree(demo_workflow.root / sub, ws.root / sub, symlinks=True)
    # notebook 04's pick depends on how the demo training went; this test needs one that uses `all`
    save_choice(ws.predictions, Choice(Single("all+tta", ("all+tta",)), {"all": "all"}, tta=("hflip", "vflip")),
                overwrite=True)
    before = {p.name: p.stat().st_mtime_ns for p in (ws.predictions / "all").iterdir()}
    res = training.train_stage("final", "demo", ws, steps=2, progress=False)
    assert res.finished and res.stage == "final"
    files = lambda stage: Stage.open(ws, stage).record["fingerprint_dict"]["train_files"]  # noqa: E731
    n_val = len(selection.image_ids_of(ws, "val"))
    assert n_val and len(files("final")) == len(files("all")) + n_val  # the validation images too
    preds = selection.chosen_test_predictions(ws, ("hflip", "vflip"), progress=False, use_final=True)
    assert set(preds) == set(selection.image_ids_of(ws, "test"))
    assert (ws.predictions / "all-final").is_dir()
    after = {p.name: p.stat().st_mtime_ns for p in (ws.predictions / "all").iterdir()}
    assert after == before  # the validated model's cached predictions are untouched


def test_a_learned_ranking_chosen_in_04_is_stored_and_applied_in_05(demo_workflow, tmp_path):
    """Notebook 04's glue fits the learned ranking on validation (here the validation image and
    two training images: leave-one-image-out needs two or more) and stores it; notebook 05's
    applies that stored model to the test predictions."""
    import numpy as np

    from helpers.infer import predict, ranking, rescore

    ws = get_workspace(tmp_path / "ws")
    for sub in ("data", "shards", "checkpoints", "predictions"):
        shutil.rmtree(ws.root / sub, ignore_errors=True)
        shutil.copytree(demo_workflow.root / sub, ws.root / sub, symlinks=True)
    strategy = Single("all+tta", ("all+tta",))
    tta = ("hflip", "vflip")
    ids = selection.image_ids_of(ws, "val") + selection.image_ids_of(ws, "train")[:2]
    val_preds = predict.predict_stage(ws, "all", ids, tta=tta, progress=False)
    gt = predict.shard_ground_truth(ws, ids)
    cmp, shown = selection.rescoring(ws, ["all"], strategy, val_preds, gt, tta, choice="learned-match50")
    table = StrategyComparison([], {strategy.name: strategy}, {}, "AP50@100", strategy.name, strategy.name)
    saved = selection.save_choice(ws, ["all"], table, cmp, tta, overwrite=True)
    assert load_choice(ws.predictions) == saved and saved.stages == {"all": "all"} and saved.tta == tta
    assert cmp.chosen == "learned-match50" and (ws.predictions / ranking.RANKING_FILE).is_file()
    assert {r["recipe"] for r in cmp.rows} >= {"none", "learned-match50", "learned-iou"}
    X, match = cmp.learning_rows
    loo = ranking.leave_one_image_out("match50", X, match)
    for i in ids:  # the validation scores shown are the leave-one-out ones
        np.testing.assert_array_equal(shown[i].scores, np.sort(loo[i])[::-1])

    test_ids = selection.image_ids_of(ws, "test")
    answer = selection.chosen_test_predictions(ws, None, progress=False)  # the choice's own tta
    with pytest.raises(ValueError, match=r"tta = \['hflip', 'vflip'\]: use the same here"):
        selection.chosen_test_predictions(ws, ("hflip",), progress=False)
    raw = predict.predict_stage(ws, "all", test_ids, tta=tta, progress=False)
    passes = selection.prediction_passes(ws, strategy, test_ids, {"all": "all"}, tta)
    stored = ranking.load(ws.predictions / ranking.RANKING_FILE)
    for i in test_ids:
        expected = stored.rescore(raw[i], rescore.signals(raw[i], passes[i]))
        np.testing.assert_array_equal(answer[i].scores, expected.scores)
        assert answer[i].rles == expected.rles
        assert not np.array_equal(answer[i].scores, raw[i].scores)  # it rescored
    # notebook 04 choosing strategies by a segmentation metric still ranks by the leaderboard's
    by_pq, _ = selection.rescoring(ws, ["all"], strategy, val_preds, gt, tta, "PQ")
    assert by_pq.metric == "AP50@100"


def test_notebook_05_on_a_dataset_without_test_images_says_what_to_do(tmp_path):
    """Your own annotations have no test split: notebook 05 (the course's submission) says so and
    points to notebook 06, before anything is predicted."""
    from helpers.data import shards
    from helpers.data.demo_data import make_demo_dataset
    from helpers.data.label_images import export_label_pairs
    from helpers.data.layouts import import_dataset
    from helpers.data.manifest import MANIFEST_NAME, read_manifest
    from helpers.errors import InvalidRequest

    demo = make_demo_dataset(tmp_path / "demo", n_train=2, n_test=0, size=96)
    mine = import_dataset(export_label_pairs(demo, tmp_path / "pairs"), tmp_path / "imported")
    ws = get_workspace(tmp_path / "ws")
    shards.write_shards(mine, read_manifest(mine / MANIFEST_NAME), ws.shards, progress=False, verbose=False)
    with pytest.raises(InvalidRequest, match="has no test images .* Predict your own images with notebook 06"):
        selection.chosen_test_predictions(ws, progress=False)
