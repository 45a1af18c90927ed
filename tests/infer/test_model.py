"""Loading a trained demo stage for prediction and running it on whole images."""
import numpy as np
import pytest

from _training_support import demo_dataset
from helpers.infer import model as M


@pytest.fixture(scope="session")
def heads_ws(heads):
    return heads[0]


@pytest.fixture(scope="session")
def loaded(heads_ws):
    return M.load_model(heads_ws, "heads", "demo", min_score=0.0)


@pytest.fixture(scope="session")
def image(base):
    from helpers.data.dataset import open_dataset, read_image

    return read_image(open_dataset(demo_dataset(base)).train[0].image_path)


def test_load_restores_the_newest_complete_checkpoint(heads_ws, loaded):
    import tensorflow as tf

    ws = heads_ws
    model, params = loaded
    assert params.task.init_checkpoint.endswith("ckpt-10")
    r = tf.train.load_checkpoint(str(ws.checkpoints / "heads" / "ckpt-10"))
    key = next(k for k in r.get_variable_to_shape_map()
               if k.startswith("mask_head/") and k.endswith("kernel/.ATTRIBUTES/VARIABLE_VALUE"))
    stored = r.get_tensor(key)
    assert isinstance(model, M.LoadedModel)
    assert any(np.array_equal(v.numpy(), stored) for v in model.keras.mask_head.weights)


def test_predict_full_resolution_image(loaded, image):
    model, params = loaded
    det = M.predict_image(model, params, image, score_threshold=0.0)
    n = len(det["scores"])
    h, w = image.shape[:2]
    assert n > 0 and det["image_shape"] == (h, w)
    assert det["boxes"].shape == (n, 4) and det["masks"].shape[0] == n
    assert det["masks"].shape[1] == det["masks"].shape[2] == 28  # box-relative
    assert np.all(np.diff(det["scores"]) <= 0)
    assert det["boxes"].min() >= 0 and det["boxes"][:, 2].max() <= h and det["boxes"][:, 3].max() <= w
    assert set(np.unique(det["classes"])) <= {1}


def test_any_image_size_is_padded_not_resized(loaded, image):
    model, params = loaded
    crop = image[:200, :230]  # not a multiple of 32
    det = M.predict_image(model, params, crop, score_threshold=0.0)
    assert det["image_shape"] == (200, 230)
    assert det["boxes"][:, 2].max() <= 200 and det["boxes"][:, 3].max() <= 230
    with pytest.raises(ValueError, match="uint8"):
        M.predict_image(model, params, image.astype(np.float32))


def test_chosen_checkpoint_and_torn_one_refused(heads_ws):
    ws = heads_ws
    prefix = M.resolve_checkpoint(ws, "heads", 5)
    assert prefix.name == "ckpt-5"
    with pytest.raises(M.CheckpointNotFound, match="ckpt-7"):
        M.resolve_checkpoint(ws, "heads", 7)
    with pytest.raises(M.CheckpointNotFound, match="not been trained"):
        M.load_model(ws, "all-but-not-trained")
    with pytest.raises(ValueError, match="profile"):
        M.stage_params(ws, "heads", profile="colab")


def test_input_scale_enlarges_the_model_input_and_maps_back(loaded, image):
    """A stage trained at scale s sees images enlarged by s; detections come back in image pixels."""
    import copy

    model, params = loaded
    h, w = image.shape[:2]
    scaled = copy.deepcopy(params)
    scaled.override({"task": {"input_scale": 2.0}}, is_strict=True)
    assert M.input_scale(params) == 1.0 and M.input_scale(scaled) == 2.0
    plain = M.predict_image(model, params, image, score_threshold=0.0)
    big = M.predict_image(model, scaled, image, score_threshold=0.0)
    stride = 2 ** params.task.model.max_level
    shapes = {tuple(c.structured_input_signature[0][0].shape)
              for c in model.infer._list_all_concrete_functions()}
    assert (1, -(-2 * h // stride) * stride, -(-2 * w // stride) * stride, 3) in shapes
    assert big["image_shape"] == plain["image_shape"] == (h, w)
    assert len(big["boxes"]) and big["boxes"].max() <= max(h, w) + 1e-3 and big["boxes"].min() >= -1e-3


def test_each_padded_size_is_traced_once_and_kept_with_the_loaded_model(loaded, image):
    """The inference function lives in the LoadedModel (nothing is attached to the Keras model):
    a second image of an already seen padded size reuses its trace."""
    model, params = loaded
    M.predict_image(model, params, image[:100, :100], score_threshold=0.0)
    traces = model.infer.experimental_get_tracing_count()
    M.predict_image(model, params, image[-100:, -100:], score_threshold=0.0)
    assert model.infer.experimental_get_tracing_count() == traces
