"""Notebook 05's glue: the final model stands in for `all`, cached apart from it."""
import shutil

import pytest

from helpers.infer import ensemble, selection
from helpers.train import training
from helpers.workspace import get_workspace


def test_final_model_needs_a_finished_final_stage(demo_workflow):
    with pytest.raises(ValueError, match="stage = 'final'"):
        selection.chosen_test_predictions(demo_workflow, ("hflip", "vflip"), progress=False, use_final=True)


def test_final_model_predicts_the_test_images_in_place_of_all(demo_workflow, tmp_path):
    ws = get_workspace(tmp_path / "ws")
    for sub in ("data", "shards", "checkpoints", "predictions"):
        shutil.rmtree(ws.root / sub, ignore_errors=True)
        shutil.copytree(demo_workflow.root / sub, ws.root / sub, symlinks=True)
    # notebook 04's pick depends on how the demo training went; this test needs one that uses `all`
    ensemble.save_strategy(ensemble.Strategy("all+tta", "single", ("all+tta",)), selection.choice_path(ws),
                           overwrite=True)
    before = {p.name: p.stat().st_mtime_ns for p in (ws.predictions / "all").iterdir()}
    res = training.train_stage("final", "demo", ws, steps=2, progress=False)
    assert res.finished and res.stage == "final"
    files = lambda stage: training.read_stage_info(ws, stage)["fingerprint_dict"]["train_files"]  # noqa: E731
    n_val = len(selection.image_ids_of(ws, "val"))
    assert n_val and len(files("final")) == len(files("all")) + n_val  # the validation images too
    preds = selection.chosen_test_predictions(ws, ("hflip", "vflip"), progress=False, use_final=True)
    assert set(preds) == set(selection.image_ids_of(ws, "test"))
    assert (ws.predictions / "all-final").is_dir()
    after = {p.name: p.stat().st_mtime_ns for p in (ws.predictions / "all").iterdir()}
    assert after == before  # the validated model's cached predictions are untouched
