"""The window decoder returns what Model Garden's TfExampleDecoder returns, for a window."""
import numpy as np
import pytest

from _training_support import demo_shards


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    import tensorflow as tf

    shards = demo_shards(tmp_path_factory.getbasetemp() / "training")
    files = sorted(shards.glob("labeled-*.tfrecord"))[:2]
    return [next(iter(tf.data.TFRecordDataset(str(f)))) for f in files]


def _full(rec):
    from official.vision.dataloaders.tf_example_decoder import TfExampleDecoder

    d = TfExampleDecoder(include_mask=True).decode(rec)
    return {k: v.numpy() for k, v in d.items()}


def _window(rec, window):
    from helpers.train_input import WindowDecoder

    d = WindowDecoder(window).decode(rec)
    return {k: v.numpy() for k, v in d.items()}


def test_whole_image_window_equals_model_gardens_decoder(records):
    for rec in records:
        full = _full(rec)
        h, w = full["image"].shape[:2]
        win = _window(rec, (h, w))
        assert set(win) >= {"image", "groundtruth_boxes", "groundtruth_instance_masks", "groundtruth_classes",
                            "groundtruth_area", "groundtruth_is_crowd", "source_id", "height", "width"}
        np.testing.assert_array_equal(win["image"], full["image"])
        np.testing.assert_array_equal(win["groundtruth_instance_masks"], full["groundtruth_instance_masks"])
        np.testing.assert_allclose(win["groundtruth_boxes"], full["groundtruth_boxes"], atol=1e-6)
        np.testing.assert_array_equal(win["groundtruth_classes"], full["groundtruth_classes"])
        np.testing.assert_allclose(win["groundtruth_area"], full["groundtruth_area"])
        assert win["source_id"] == full["source_id"]


def test_window_is_a_native_crop_with_the_visible_instances(records):
    for rec in records:
        full = _full(rec)
        win = _window(rec, (96, 112))
        img = win["image"]
        assert img.shape == (96, 112, 3) and (win["height"], win["width"]) == (96, 112)
        H, W = full["image"].shape[:2]
        offs = [(y, x) for y in range(H - 95) for x in range(W - 111)
                if np.array_equal(full["image"][y:y + 96, x:x + 112], img)]
        assert offs, "the window is not an unscaled crop of the image"
        y, x = offs[0]
        crops = full["groundtruth_instance_masks"][:, y:y + 96, x:x + 112]
        visible = crops.reshape(len(crops), -1).any(1)
        np.testing.assert_array_equal(win["groundtruth_instance_masks"], crops[visible])
        m = win["groundtruth_instance_masks"] > 0
        for k in range(len(m)):  # tight normalised boxes of the visible part
            rows, cols = np.flatnonzero(m[k].any(1)), np.flatnonzero(m[k].any(0))
            np.testing.assert_allclose(win["groundtruth_boxes"][k],
                                       [rows[0] / 96, cols[0] / 112, (rows[-1] + 1) / 96, (cols[-1] + 1) / 112],
                                       atol=1e-6)


def test_without_instance_map_the_mask_pngs_are_used(records):
    import tensorflow as tf

    from helpers.train_input import INSTANCE_MAP_KEY

    ex = tf.train.Example.FromString(records[0].numpy())
    del ex.features.feature[INSTANCE_MAP_KEY]
    rec = tf.constant(ex.SerializeToString())
    full = _full(rec)
    h, w = full["image"].shape[:2]
    win = _window(rec, (h, w))
    np.testing.assert_array_equal(win["groundtruth_instance_masks"], full["groundtruth_instance_masks"])
