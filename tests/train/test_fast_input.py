"""The training input built on instance maps gives the targets Model Garden's parser gives.

For one window, flips and scale, the reference is the old path: the window decoder's planes (one
per nucleus) through Model Garden's own ``maskrcnn_input.Parser``. Its flips are switched off and
the window is flipped before it instead (each flip of the image and masks, the boxes recomputed
from the flipped masks), and its scale jitter is pinned to the scale under test; the crop offset
it draws is read from its ``image_info`` and replayed. The RPN's sampler draws at random in
both, so the score targets are compared as Model Garden's sampler sees them: the same positive,
negative and ignored anchors before sampling, and samples of the same sizes drawn from them.
"""
import numpy as np
import pytest

from _training_support import demo_shards

def _parser_kwargs(profile: str, scale: float) -> dict:
    from helpers.train.config import get_profile

    p = get_profile(profile)
    return dict(output_size=[p.crop_size, p.crop_size], min_level=p.min_level, max_level=p.max_level,
                num_scales=p.num_scales, aspect_ratios=list(p.aspect_ratios), anchor_size=p.anchor_size,
                rpn_match_threshold=0.7, rpn_unmatched_threshold=0.3,
                rpn_batch_size_per_im=p.rpn_batch_size_per_im, rpn_fg_fraction=p.rpn_fg_fraction,
                aug_scale_min=scale, aug_scale_max=scale, max_num_instances=p.max_num_instances,
                include_mask=True, mask_crop_size=p.mask_crop_size)


def _reference(record, corner, window, hflip, vflip, kwargs, torchvision_anchors=False):
    """Model Garden's parser on the old decoder's window, flipped before it (labelled for
    torchvision's anchors: the task's parser of such shards when the model takes them)."""
    import tensorflow as tf
    from official.vision.dataloaders import maskrcnn_input

    from helpers.train.instance_map_input import TorchvisionAnchorsParser

    from helpers.train.train_input import WindowDecoder, tight_boxes

    dec = WindowDecoder(window)
    parsed = dec.parse(record)
    data = dec.decode_window(parsed, dec._decode_image(parsed), *corner)
    for flip, axis in ((hflip, 1), (vflip, 0)):
        if flip:
            data["image"] = tf.reverse(data["image"], [axis])
            data["groundtruth_instance_masks"] = tf.reverse(data["groundtruth_instance_masks"], [axis + 1])
    data["groundtruth_boxes"] = tight_boxes(data["groundtruth_instance_masks"] > 0.5)
    parser_cls = TorchvisionAnchorsParser if torchvision_anchors else maskrcnn_input.Parser
    parser = parser_cls(aug_rand_hflip=False, aug_rand_vflip=False, **kwargs)
    return parser._parse_train_data(data)


def _ours(record, corner, window, hflip, vflip, scale, offset, kwargs, torchvision_anchors=False):
    import tensorflow as tf

    from helpers.train.instance_map_input import InstanceMapParser, WindowSampler, decode_whole

    data = WindowSampler(window).window_at(decode_whole(record), *corner)
    parser = InstanceMapParser(aug_rand_hflip=True, aug_rand_vflip=True, torchvision_anchors=torchvision_anchors,
                               **kwargs)
    return parser.parse_drawn(data, {"hflip": tf.constant(hflip), "vflip": tf.constant(vflip),
                                     "scale": tf.constant(scale, tf.float32), "offset": offset})


def _compare(ref, ours):
    (ri, rl), (oi, ol) = ref, ours
    np.testing.assert_allclose(oi.numpy(), ri.numpy(), atol=1e-5)
    np.testing.assert_array_equal(ol["image_info"].numpy(), rl["image_info"].numpy())
    for key in ("gt_boxes", "gt_outer_boxes"):
        np.testing.assert_allclose(ol[key].numpy(), rl[key].numpy(), atol=1e-4, err_msg=key)
    np.testing.assert_array_equal(ol["gt_classes"].numpy(), rl["gt_classes"].numpy())
    np.testing.assert_allclose(ol["gt_masks"].numpy(), rl["gt_masks"].numpy(), atol=1e-5, err_msg="gt_masks")
    assert set(ol["rpn_box_targets"]) == set(rl["rpn_box_targets"])
    for level in rl["rpn_box_targets"]:
        np.testing.assert_allclose(ol["rpn_box_targets"][level].numpy(), rl["rpn_box_targets"][level].numpy(),
                                   atol=1e-4, err_msg=f"rpn_box_targets {level}")
        np.testing.assert_array_equal(ol["anchor_boxes"][level].numpy(), rl["anchor_boxes"][level].numpy())
    # score targets: 1 positive, 0 negative (both sampled), -1 not sampled; Model Garden's dense
    # matcher on the reference's boxes says which anchors are positive and negative
    rs = np.concatenate([v.numpy().ravel() for v in rl["rpn_score_targets"].values()])
    os_ = np.concatenate([v.numpy().ravel() for v in ol["rpn_score_targets"].values()])
    indicators = _dense_indicators(rl)
    positive, negative = indicators == 1, indicators == -1
    assert (rs == 1).sum() == (os_ == 1).sum() and (rs == 0).sum() == (os_ == 0).sum()
    for sampled in (rs, os_):
        assert positive[sampled == 1].all() and negative[sampled == 0].all()
    return int((rl["gt_classes"].numpy() > 0).sum()), int(positive.sum())


def _dense_indicators(labels):
    """Model Garden's ``BoxMatcher`` indicators (1 positive, -1 negative, -2 ignored) of every
    anchor against the reference's boxes: the dense IoU matrix."""
    import tensorflow as tf
    from official.vision.ops import anchor

    boxes = labels["gt_boxes"]
    boxes = tf.boolean_mask(boxes, labels["gt_classes"] > 0)
    flat = tf.concat([tf.reshape(v, [-1, 4]) for v in labels["anchor_boxes"].values()], 0)
    dense = anchor.RpnAnchorLabeler(0.7, 0.3)
    return dense.matcher(dense.similarity_calc(flat, boxes))[1].numpy()


def _check_record(record, profile, cases, seed=0, torchvision_anchors=False):
    """Every case (flips, scale) at a random window of ``record``; returns nuclei and positives seen."""
    import tensorflow as tf

    from helpers.train.config import get_profile

    p = get_profile(profile)
    window = (p.window(), p.window())
    rng = np.random.default_rng(seed)
    seen = []
    for hflip, vflip, scale in cases:
        kwargs = _parser_kwargs(profile, scale)
        h, w = tf.io.decode_png(tf.train.Example.FromString(record.numpy()).features.feature["image/encoded"]
                                .bytes_list.value[0]).shape[:2]
        win = (min(h, window[0]), min(w, window[1]))
        corner = (int(rng.integers(0, h - win[0] + 1)), int(rng.integers(0, w - win[1] + 1)))
        ref = _reference(record, corner, win, hflip, vflip, kwargs, torchvision_anchors)
        offset = tf.cast(ref[1]["image_info"][3], tf.int32)
        seen.append(_compare(ref, _ours(record, corner, win, hflip, vflip, scale, offset, kwargs,
                                        torchvision_anchors)))
    return seen


CASES = [(False, False, 1.0), (True, False, 1.0), (False, True, 1.13), (True, True, 1.25)]


@pytest.fixture(scope="module")
def demo_records(tmp_path_factory):
    import tensorflow as tf

    shards = demo_shards(tmp_path_factory.getbasetemp() / "training")
    return [next(iter(tf.data.TFRecordDataset(str(f)))) for f in sorted(shards.glob("labeled-*.tfrecord"))[:3]]


def test_targets_equal_model_gardens_parser_on_demo_data(demo_records):
    seen = [s for rec in demo_records for s in _check_record(rec, "demo", CASES)]
    assert sum(n for n, _ in seen) > 20 and sum(p for _, p in seen) > 20, seen  # the comparison had content


def test_torchvisions_anchors_are_labelled_alike_by_both_parsers(demo_records):
    """With torchvision's anchors (helpers/train/torchvision_ops.py) both parsers label the same
    anchors alike: torchvision's, not Model Garden's (centres half a stride apart)."""
    from official.vision.ops import anchor

    from helpers.train import torchvision_ops

    seen = _check_record(demo_records[0], "demo", CASES[:2], torchvision_anchors=True)
    assert sum(n for n, _ in seen) > 5 and sum(p for _, p in seen) > 5, seen
    kwargs = _parser_kwargs("demo", 1.0)
    settings = {k: kwargs[k] for k in ("min_level", "max_level", "num_scales", "aspect_ratios", "anchor_size")}
    size = kwargs["output_size"]
    _, labels = _ours(demo_records[0], (0, 0), size, False, False, 1.0, np.zeros(2, np.int32), kwargs, True)
    ours, theirs = (torchvision_ops.torchvision_anchors(settings, size),
                    anchor.build_anchor_generator(**settings)(image_size=size))
    for level, boxes in labels["anchor_boxes"].items():
        np.testing.assert_array_equal(boxes.numpy(), ours[level].numpy())
        assert np.abs(boxes.numpy() - theirs[level].numpy()).max() >= 2 ** int(level) / 2 - 1


@pytest.mark.realdata
def test_targets_equal_model_gardens_parser_on_real_data(real_data, tmp_path_factory):
    """Two real images, the densest (1,862 nuclei) among them, at the colab profile's crop."""
    import tensorflow as tf

    from helpers.data.manifest import REPO_MANIFEST, read_manifest
    from helpers.data.shards import write_shards

    d = tmp_path_factory.getbasetemp() / "fast_input_real"
    rows = sorted((r for r in read_manifest(REPO_MANIFEST) if r["split"] != "test"), key=lambda r: r["n_nuclei"])
    pick = [rows[len(rows) // 2], rows[-1]]
    if not (d / "index.json").is_file():
        write_shards(real_data, pick, d, progress=False, verbose=False)
    records = [next(iter(tf.data.TFRecordDataset(str(f)))) for f in sorted(d.glob("*.tfrecord"))]
    seen = [s for rec in records for s in _check_record(rec, "colab", CASES, seed=1)]
    assert min(n for n, _ in seen) > 50, seen


def test_anchor_matches_equal_model_gardens_matcher():
    """The local matcher's (column, indicator) of every anchor against Model Garden's dense
    ``BoxMatcher`` on the same IoU thresholds, for boxes of every size, touching the border,
    overlapping, equal, and none at all."""
    import tensorflow as tf
    from official.vision.ops import anchor

    from helpers.train.anchor_labels import LocalRpnAnchorLabeler, overlapping_pairs

    anchors = anchor.build_anchor_generator(2, 6, 2, [0.5, 1.0, 2.0], 3.0)(image_size=(256, 320))
    flat = tf.concat([tf.reshape(v, [-1, 4]) for v in anchors.values()], 0)
    dense = anchor.RpnAnchorLabeler(0.7, 0.3, 256, 0.5)
    local = LocalRpnAnchorLabeler(0.7, 0.3, 256, 0.5)
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 200):
        centre, side = rng.uniform(0, [256, 320], (n, 2)), rng.uniform(1, 90, (n, 2))
        boxes = np.concatenate([centre - side / 2, centre + side / 2], 1).clip(0, [256, 320, 256, 320])
        if n > 2:
            boxes[1] = boxes[0]                       # two equal boxes: the first wins ties
            boxes[2] = [0, 0, 12, 12]                 # one at the corner
        boxes = tf.constant(boxes, tf.float32)
        want = dense.matcher(dense.similarity_calc(flat, boxes))
        got = local.match(flat, boxes, *overlapping_pairs(anchors, boxes))
        np.testing.assert_array_equal(got[1].numpy(), want[1].numpy())
        positive = want[1].numpy() == 1
        np.testing.assert_array_equal(got[0].numpy()[positive], want[0].numpy()[positive])
        assert positive.sum() >= len(np.unique(boxes.numpy(), axis=0)) - 1  # each box's best anchor at least


def test_mask_sampling_equals_crop_and_resize():
    """``indicator_crop_and_resize`` against TensorFlow's kernel on the 0/1 planes, for boxes
    inside, across the border and outside the map."""
    import tensorflow as tf

    from helpers.train.instance_map_input import indicator_crop_and_resize

    rng = np.random.default_rng(1)
    label_map = rng.integers(0, 6, (37, 53)).astype(np.int32)
    ids = np.array([1, 2, 3, 5, 5, 4], np.int32)
    boxes = np.array([[0.1, 0.1, 0.5, 0.6], [0, 0, 1, 1], [-0.2, 0.3, 0.4, 1.3],
                      [0.33, 0.21, 0.34, 0.22], [1.1, 1.1, 1.5, 1.5], [0.9, 0.05, 0.2, 0.5]], np.float32)
    planes = (label_map[None] == ids[:, None, None]).astype(np.float32)[..., None]
    want = tf.image.crop_and_resize(planes, boxes, np.arange(len(ids)), [28, 28])[..., 0]
    got = indicator_crop_and_resize(tf.constant(label_map), tf.constant(ids), tf.constant(boxes), 28)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-6)


def _batch(task_cfg, files):
    from helpers.train.tasks.nuclei_maskrcnn import NucleiMaskRCNNTask

    task_cfg.train_data.input_path = [str(f) for f in files]
    return next(iter(NucleiMaskRCNNTask(task_cfg).build_inputs(task_cfg.train_data)))


def test_the_task_reads_instance_maps_and_the_old_way_without_them(tmp_path_factory, monkeypatch):
    """Shards with instance maps: the new input, cached or (over the cache budget) decoded each
    time; a shard stored without one (overlapping masks): every shard read the old way. Each
    gives a training batch with nuclei in it, of the same structure."""
    import tensorflow as tf

    from helpers.data.shards import INSTANCE_MAP_KEY
    from helpers.train import instance_map_input
    from helpers.train.configs.nuclei_maskrcnn import experiment_config

    shards = demo_shards(tmp_path_factory.getbasetemp() / "training")
    files = sorted(shards.glob("labeled-*.tfrecord"))[:3]
    assert all(s["instance_map"] for s in instance_map_input.describe_shards(files))
    stripped = tmp_path_factory.mktemp("no_map") / files[0].name
    ex = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(str(files[0])))).numpy())
    del ex.features.feature[INSTANCE_MAP_KEY]
    with tf.io.TFRecordWriter(str(stripped)) as w:
        w.write(ex.SerializeToString())
    assert not instance_map_input.describe_shards([stripped])[0]["instance_map"]

    cfg = experiment_config("demo", "heads", [], accelerator="cpu")
    built = {}
    for name, fs, budget in (("cached", files, None), ("uncached", files, 0), ("old way", [stripped] + files[1:], None)):
        if budget is not None:
            monkeypatch.setattr(instance_map_input, "CACHE_BUDGET_BYTES", budget)
        images, labels = _batch(cfg.task, fs)
        monkeypatch.undo()
        built[name] = (images.shape, {k: tf.nest.map_structure(lambda t: t.shape, v) for k, v in labels.items()})
        assert (labels["gt_classes"].numpy() > 0).sum() > 0, name
    assert built["cached"] == built["uncached"] == built["old way"]
