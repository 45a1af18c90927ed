"""The installed stack, end to end and small: every helpers module imports, then the demo heads
stage is trained, restored, run on the test images, and submitted.

Both environments run these. In the Colab-like one (``bash bin/colab-env test -m colab``) they are
the check that Colab's own TensorFlow, Keras, Model Garden, numpy and pycocotools still train,
restore, predict and score with our code; the rest of the suite runs in the main environment only.
"""
import importlib
import pkgutil

import pytest

import helpers
from _training_support import demo_dataset

pytestmark = pytest.mark.colab

# run as a subprocess only, with torch (tests/train/test_torch_convert.py); never imported next to TensorFlow
SUBPROCESS_ONLY = {"helpers.train.torch_export"}
MODULES = sorted(m.name for m in pkgutil.walk_packages(helpers.__path__, "helpers."))


@pytest.mark.parametrize("name", [m for m in MODULES if m not in SUBPROCESS_ONLY])
def test_every_module_imports(name):
    assert importlib.import_module(name).__name__ == name


def test_the_module_list_is_the_package():
    assert {"helpers.colab", "helpers.train.training", "helpers.infer.predict"} <= set(MODULES)
    assert SUBPROCESS_ONLY <= set(MODULES)


def test_tiny_train_predict_submit(heads, base, tmp_path):
    """The demo heads stage trains to its last step, is restored, predicts every test image at
    full size, and gives an answer that pycocotools loads."""
    from helpers.infer.predict import image_ids_of, predict_stage
    from helpers.infer.submission import build_answer, load_test_images, read_answer, write_answer

    ws, result = heads
    assert result.finished and result.end_step == result.planned_steps > 0
    assert result.checkpoint is not None and result.checkpoint.name == f"ckpt-{result.end_step}"
    test_ids = image_ids_of(ws, "test")
    images = load_test_images(demo_dataset(base))
    assert sorted(t.image_id for t in images) == test_ids

    preds = predict_stage(ws, "heads", test_ids, score_threshold=0.0, progress=False)
    assert set(preds) == set(test_ids)
    for t in images:
        assert tuple(preds[t.image_id].size) == (t.height, t.width)
    assert sum(len(d) for d in preds.values()) > 0, "the trained demo heads found nothing at score 0"

    entries = build_answer(preds, images)
    files = write_answer(entries, tmp_path, images)  # validates, pycocotools' loadRes included
    assert read_answer(files.zip_path) == read_answer(files.json_path) and len(entries) > 0
    assert set(files.summary["images"]) == {t.file_name for t in images}
