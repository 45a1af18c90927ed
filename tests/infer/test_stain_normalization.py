"""Stain normalisation at prediction (helpers/infer/stain_normalization.py): torchstain's Macenko, for real."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.infer import stain_normalization as stain


@pytest.fixture(scope="module")
def demo_images(tmp_path_factory):
    from helpers.data.demo_data import make_demo_dataset

    root = tmp_path_factory.mktemp("stain") / "demo"
    make_demo_dataset(root)
    paths = sorted(p for p in Path(root).rglob("*.png") if "masks" not in p.parts)
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


# Ruifrok and Johnston's haematoxylin and eosin vectors (optical density), as another lab's stain
OTHER_LAB = stain.StainReference(((0.650, 0.072), (0.704, 0.990), (0.286, 0.105)), (1.4, 0.5))


def _mean_abs(a, b) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


def test_an_image_in_another_stain_comes_back_to_the_reference(demo_images):
    reference = stain.fit_reference(demo_images[:-1])
    image = demo_images[-1]
    restained, _ = OTHER_LAB.normalize(image)
    assert _mean_abs(restained, image) > 15  # a visible shift
    normal, note = reference.normalize(image)
    back, note2 = reference.normalize(restained)
    assert note is None and note2 is None and back.dtype == np.uint8 and back.shape == image.shape
    # both land near each other: much nearer than the two stains were
    assert _mean_abs(back, normal) < 0.5 * _mean_abs(restained, image)
    # and the normalised image's own Macenko stain is the reference's
    refit = stain.fit_reference([back])
    assert np.allclose(refit.stain_vectors, reference.stain_vectors, atol=0.03)


def test_the_reference_is_the_median_of_the_images_stains(demo_images):
    one = [stain.fit_reference([im]) for im in demo_images[:3]]
    both = stain.fit_reference(demo_images[:3], image_ids=("a", "b", "c"))
    np.testing.assert_allclose(both.stain_vectors, np.median([r.stain_vectors for r in one], axis=0))
    np.testing.assert_allclose(both.max_concentrations, np.median([r.max_concentrations for r in one], axis=0))
    assert stain.StainReference.from_json(json.loads(json.dumps(both.to_json()))) == both


def test_an_image_without_stain_is_predicted_as_it_is(demo_images):
    reference = stain.fit_reference(demo_images[:2])
    blank = np.full((64, 64, 3), 245, np.uint8)
    out, note = reference.normalize(blank)
    assert out is blank and "too little stained tissue" in note
    # a blank image among the training images does not set the reference; only blanks are an error
    assert stain.fit_reference([blank, *demo_images[:2]]) == stain.fit_reference(demo_images[:2])
    with pytest.raises(stain.StainError, match="enough stained tissue"):
        stain.fit_reference([blank, blank])


def test_an_unknown_method_or_a_missing_package_is_a_clear_error(monkeypatch):
    with pytest.raises(stain.StainError, match="'vahadane' unknown"):
        stain.check_method("vahadane")
    monkeypatch.setitem(sys.modules, "torchstain", None)  # as where it is not installed
    with pytest.raises(stain.StainError, match="pip install torchstain.*stain = 'none'"):
        stain.fit_reference([np.zeros((8, 8, 3), np.uint8)])


def test_a_reference_spread_over_many_training_images():
    ids = [f"img{k:02d}" for k in range(50)]
    picked = stain.reference_ids(ids, limit=5)
    assert picked == ("img00", "img12", "img24", "img36", "img49")
    assert stain.reference_ids(ids[:3]) == ("img00", "img01", "img02")


# --------------------------------------------------------------------------- in a workspace
@pytest.fixture(scope="module")
def ws(demo_copy):
    return demo_copy


def test_the_workspace_reference_is_fit_on_its_training_images_once(ws):
    from helpers.infer import predict

    path = ws.predictions / stain.REFERENCE_FILE
    path.unlink(missing_ok=True)
    reference = predict.stain_reference(ws, "macenko")
    train = predict.image_ids_of(ws, "train")
    assert reference.image_ids == tuple(sorted(train)) and path.is_file()
    mtime = path.stat().st_mtime_ns
    assert predict.stain_reference(ws, "macenko") == reference and path.stat().st_mtime_ns == mtime  # read, not fit again
    # a reference of other images (the training split changed) is fit again; so is a broken file
    path.write_text(json.dumps({**reference.to_json(), "image_ids": ["elsewhere"]}))
    assert predict.stain_reference(ws, "macenko") == reference
    path.write_text("{")
    assert predict.stain_reference(ws, "macenko") == reference
    assert predict.stain_reference(ws, "none") is None
    with pytest.raises(stain.StainError, match="unknown"):
        predict.stain_reference(ws, "reinhard")


def test_predictions_of_normalised_images_are_cached_apart(ws, capsys):
    from helpers.infer import predict

    image_id = predict.image_ids_of(ws, "val")[0]
    plain = predict.predict_stage(ws, "all", [image_id], progress=False)[image_id]
    normalised = predict.predict_stage(ws, "all", [image_id], progress=False, stain="macenko")[image_id]
    assert (ws.predictions / "all+macenko").is_dir()
    assert len(normalised) > 0
    # the model saw another image: other detections (a shift of the stain moves scores and masks)
    assert len(plain) != len(normalised) or not np.allclose(plain.scores, normalised.scores)
    capsys.readouterr()
    again = predict.predict_stage(ws, "all", [image_id], progress=False, stain="macenko")[image_id]
    assert "(0 computed, 1 from cache)" in capsys.readouterr().out
    np.testing.assert_array_equal(again.scores, normalised.scores)
