"""The training input, old and new, on the same shards: where the time goes, and what it buys.

    python benchmarks/bench_input.py                   # real data from ../shared (else synthetic), ~20 min
    python benchmarks/bench_input.py --train-steps 0   # without the cpu training comparison

The old input is Model Garden's reader and parser fed by the window decoder (a plane per nucleus,
``NucleiMaskRCNNTask.model_garden_inputs``); the new one reads instance maps
(``helpers.train.instance_map_input``). Prints, from one run, on the training shards:

1. **Parts of one example**, old and new, for the colab profile (512 px crops, RandAugment and
   stain jitter as in training): each part timed on its own (a ``tf.function`` each, the
   previous part's output as input, mean over the images), the sum, and what ``tf.data`` makes of
   it running two examples at a time (the pipeline's s per example).
2. **The pipelines**, each in a process of its own: s per batch for the colab (2 x 512^2) and
   cpu (1 x 512^2) profiles over ``--batches`` batches after 3 of warm-up, old / new as a
   ratio, and each process's peak RSS.
3. **The colab step on a T4, estimated**: the larger of the input's s/batch and the step's GPU
   compute, TensorFlow's profiler FLOPs of the colab model's training step at ``--t4-tflops``
   (12: a fifth of the T4's 65 TFLOPS float16 peak). An estimate: no GPU with TensorFlow is
   reachable here.
4. **The cpu profile's training** from scratch (the ``heads`` stage's recipe, every layer
   training), old and new input: s/step over ``--train-steps`` steps (the first excluded) and the
   cores the process keeps busy (its CPU seconds per wall second, sampled each second after
   the first quarter of the run), old / new as a ratio.

Run it on idle cores: what else runs shares the 2 cores and every figure with it.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
PIPELINES = ("old", "new")


# ============================================================================ workers

def _task(profile: str, files, stage="heads"):
    from helpers.train.configs.nuclei_maskrcnn import experiment_config
    from helpers.train.tasks.nuclei_maskrcnn import NucleiMaskRCNNTask

    cfg = experiment_config(profile, stage, files, accelerator="gpu" if profile == "colab" else "cpu")
    return cfg, NucleiMaskRCNNTask(cfg.task)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not carried over from the
    parent that started it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pipeline_worker(profile: str, which: str, files, batches: int) -> dict:
    """s per batch of one profile's training input, old or new, and the process's peak RSS."""
    cfg, task = _task(profile, files)
    build = task.build_inputs if which == "new" else task.model_garden_inputs
    it = iter(build(cfg.task.train_data))
    for _ in range(3):
        next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return {"s_per_batch": (time.perf_counter() - t) / batches,
            "rss_mb": peak_rss_mb()}


class CoreMeter:
    """The process's CPU seconds per wall second, sampled every second in a thread."""

    def __init__(self):
        self.samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        last_cpu, last_t = time.process_time(), time.perf_counter()
        while not self._stop.wait(1.0):
            cpu, t = time.process_time(), time.perf_counter()
            self.samples.append((cpu - last_cpu) / (t - last_t))
            last_cpu, last_t = cpu, t

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def busy(self) -> float:
        steady = self.samples[len(self.samples) // 4:] or self.samples
        return sum(steady) / max(len(steady), 1)


def train_worker(which: str, files, steps: int) -> dict:
    """The cpu profile's from-scratch heads stage for ``steps`` steps, on the old or new input."""
    from helpers.train.tasks.nuclei_maskrcnn import NucleiMaskRCNNTask
    from helpers.train.training import train_stage
    from helpers.workspace import get_workspace

    if which == "old":  # this process only: the task reads its data the old way
        NucleiMaskRCNNTask.build_inputs = NucleiMaskRCNNTask.model_garden_inputs
    ws = get_workspace(Path(tempfile.mkdtemp(prefix=f"bench_input_{which}_")))
    with CoreMeter() as meter:
        r = train_stage("heads", "cpu", ws, steps=steps, train_files=files, from_scratch=True, progress=False)
    return {"s_per_step": r.s_per_step, "cores_busy": meter.busy(),
            "rss_mb": peak_rss_mb()}


def _child(kind: str, *args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", kind, *map(str, args)], cwd=REPO,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# ============================================================================ parts of one example

def _timer(parts: dict, name: str, fn):
    import tensorflow as tf

    f = tf.function(fn)

    def run(args):
        t = time.perf_counter()
        out = f(*args)
        tf.nest.map_structure(lambda x: x.numpy() if hasattr(x, "numpy") else x, out)
        return out, time.perf_counter() - t

    def call(*args):
        """Traced for these shapes by a first call, timed on a second one (a random part draws
        anew, as in training)."""
        run(args)
        out, seconds = run(args)
        parts.setdefault(name, []).append(seconds)
        return out

    return call


def old_parts(task, params, records) -> dict:
    """Seconds per part of the old path (window decoder, then Model Garden's parser's steps)."""
    import tensorflow as tf
    from official.vision.dataloaders import maskrcnn_input
    from official.vision.ops import anchor, box_ops, preprocess_ops
    from official.vision.utils.object_detection import balanced_positive_negative_sampler as sampler_lib
    from official.vision.utils.object_detection import box_list

    from helpers.train.train_input import WindowDecoder, stain_jitter

    window, jitters = task._window()
    dec = WindowDecoder(window)
    parser = maskrcnn_input.Parser(**task.parser_arguments(params))
    p = parser
    labeler = anchor.RpnAnchorLabeler(p._rpn_match_threshold, p._rpn_unmatched_threshold,
                                      p._rpn_batch_size_per_im, p._rpn_fg_fraction)
    parts: dict = {}
    t = {name: _timer(parts, name, fn) for name, fn in {
        "read the record (parse tf.Example)": dec.parse,
        "PNG decode, image": lambda parsed: dec._decode_image(parsed),
        "window: masks as planes (PNG decode of the map, one plane a nucleus), boxes":
            lambda parsed, image, y0, x0: dec.decode_window(parsed, image, y0, x0),
        "stain jitter": lambda image: stain_jitter(image, jitters["stain_jitter"]),
        "RandAugment colour ops": lambda image: p._augmenter.distort(image) if p._augmenter else image,
        "normalize, flips (image, boxes, masks)": lambda image, boxes, masks: (
            preprocess_ops.random_vertical_flip(*preprocess_ops.random_horizontal_flip(
                preprocess_ops.normalize_image(image), boxes, masks))),
        "scale jitter: resize and crop the image, boxes": lambda image, boxes: _scale(p, image, boxes),
        "mask targets: crop_and_resize of the planes": lambda masks, cropped: tf.image.crop_and_resize(
            masks[..., None], cropped, tf.range(tf.shape(masks)[0]), [p._mask_crop_size] * 2),
        "anchor generation": lambda: anchor.build_anchor_generator(
            p._min_level, p._max_level, p._num_scales, p._aspect_ratios, p._anchor_size)(p._output_size),
        "anchor labelling: dense IoU (every anchor x every box)": lambda flat, boxes: labeler.similarity_calc(flat, boxes),
        "anchor labelling: matcher (argmaxes, force-match)": lambda iou: labeler.matcher(iou),
        "RPN box targets (gather, encode)": lambda flat, boxes, cols, ind: labeler.box_coder.encode(
            box_list.BoxList(labeler.target_gather(boxes, cols, tf.tile(tf.less_equal(ind, 0)[:, None], [1, 4]))),
            box_list.BoxList(flat)),
        "RPN balanced sampler": lambda ind: sampler_lib.BalancedPositiveNegativeSampler(
            p._rpn_fg_fraction, is_static=False).subsample(ind > -2, p._rpn_batch_size_per_im, ind > -1),
        "pad to max_num_instances": lambda masks: preprocess_ops.clip_or_pad_to_fixed_size(
            masks, p._max_num_instances, -1),
    }.items()}
    for rec in records:
        parsed = t["read the record (parse tf.Example)"](rec)
        image = t["PNG decode, image"](parsed)
        h, w = image.shape[:2]
        y0, x0 = [int(v) for v in tf.random.uniform([2], 0, 1) * [h - window[0] + 1, w - window[1] + 1]]
        d = t["window: masks as planes (PNG decode of the map, one plane a nucleus), boxes"](
            parsed, image, tf.constant(y0), tf.constant(x0))
        img = t["stain jitter"](d["image"])
        img = t["RandAugment colour ops"](img)
        img, boxes, masks = t["normalize, flips (image, boxes, masks)"](img, d["groundtruth_boxes"],
                                                                         d["groundtruth_instance_masks"])
        img2, info, boxes, keep, cropped = t["scale jitter: resize and crop the image, boxes"](img, boxes)
        t["mask targets: crop_and_resize of the planes"](tf.gather(masks, keep), cropped)
        levels = t["anchor generation"]()
        flat = tf.concat([tf.reshape(v, [-1, 4]) for v in levels.values()], 0)
        iou = t["anchor labelling: dense IoU (every anchor x every box)"](flat, boxes)
        cols, ind = t["anchor labelling: matcher (argmaxes, force-match)"](iou)
        t["RPN box targets (gather, encode)"](flat, boxes, cols, ind)
        t["RPN balanced sampler"](ind)
        t["pad to max_num_instances"](tf.gather(masks, keep))
        del parsed, image, d, masks, iou
    return {k: sum(v) / len(v) for k, v in parts.items()}


def _scale(p, image, boxes):
    from official.vision.ops import box_ops, preprocess_ops

    import tensorflow as tf

    shape = tf.shape(image)[0:2]
    boxes = box_ops.denormalize_boxes(boxes, shape)
    image, info = preprocess_ops.resize_and_crop_image(
        image, p._output_size, padded_size=preprocess_ops.compute_padded_size(p._output_size, 2 ** p._max_level),
        aug_scale_min=p._aug_scale_min, aug_scale_max=p._aug_scale_max)
    boxes = preprocess_ops.resize_and_crop_boxes(boxes, info[2, :], info[1, :], info[3, :])
    keep = box_ops.get_non_empty_box_indices(boxes)
    boxes = tf.gather(boxes, keep)
    cropped = boxes + tf.tile(info[3, :][None], [1, 2])
    cropped /= tf.tile(info[2, :][None], [1, 2])
    return image, info, boxes, keep, box_ops.normalize_boxes(cropped, shape)


def new_parts(task, params, records) -> dict:
    """Seconds per part of the new path (helpers.train.instance_map_input)."""
    import tensorflow as tf
    from official.vision.ops import anchor, preprocess_ops
    from official.vision.utils.object_detection import box_list

    from helpers.train import anchor_labels
    from helpers.train import instance_map_input as fast

    window, jitters = task._window()
    sampler = fast.WindowSampler(window, **jitters)
    p = fast.InstanceMapParser(**task.parser_arguments(params))
    lab = p._labeler
    parts: dict = {}
    t = {name: _timer(parts, name, fn) for name, fn in {
        "decode whole (first pass only: then cached)": fast.decode_whole,
        "window from memory, stain jitter": sampler,
        "RandAugment colour ops": lambda image: p._augmenter.distort(image) if p._augmenter else image,
        "normalize, flips (image and the map)": lambda image, m: (
            tf.image.flip_up_down(preprocess_ops.horizontal_flip_image(preprocess_ops.normalize_image(image))),
            m[::-1, ::-1]),
        "boxes from the map (segment min/max)": lambda m, n: fast.instance_boxes(m, n),
        "scale jitter: resize and crop the image, boxes": lambda image, boxes: _scale(p, image, boxes),
        "mask targets: sampled from the map": lambda m, ids, cropped: fast.indicator_crop_and_resize(
            m, ids, cropped, p._mask_crop_size),
        "anchor generation": lambda: anchor.build_anchor_generator(
            p._min_level, p._max_level, p._num_scales, p._aspect_ratios, p._anchor_size)(p._output_size),
        "anchor labelling: overlapping pairs, their IoU, matches": lambda levels, boxes: lab.match(
            tf.concat([tf.reshape(v, [-1, 4]) for v in levels.values()], 0), boxes,
            *anchor_labels.overlapping_pairs(levels, boxes)),
        "RPN box targets (positives only)": lambda flat, boxes, cols, ind: lab.box_coder.encode(
            box_list.BoxList(tf.gather(boxes, tf.gather(cols, tf.where(ind >= 0)[:, 0]))),
            box_list.BoxList(tf.gather(flat, tf.where(ind >= 0)[:, 0]))),
        "RPN balanced sampler": lambda ind: lab._get_rpn_samples(ind)[0],
        "pad to max_num_instances": lambda masks: preprocess_ops.clip_or_pad_to_fixed_size(
            masks, p._max_num_instances, -1),
    }.items()}
    for rec in records:
        whole = t["decode whole (first pass only: then cached)"](rec)
        win = t["window from memory, stain jitter"](whole)
        img = t["RandAugment colour ops"](win["image"])
        img, m = t["normalize, flips (image and the map)"](img, win["instance_map"])
        ids, boxes = t["boxes from the map (segment min/max)"](m, tf.shape(win["classes"])[0])
        img2, info, boxes, keep, cropped = t["scale jitter: resize and crop the image, boxes"](img, boxes)
        masks = t["mask targets: sampled from the map"](m, tf.gather(ids, keep), cropped)
        levels = t["anchor generation"]()
        cols, ind = t["anchor labelling: overlapping pairs, their IoU, matches"](levels, boxes)
        flat = tf.concat([tf.reshape(v, [-1, 4]) for v in levels.values()], 0)
        t["RPN box targets (positives only)"](flat, boxes, cols, ind)
        t["RPN balanced sampler"](ind)
        t["pad to max_num_instances"](masks)
    return {k: sum(v) / len(v) for k, v in parts.items()}


def print_parts(title: str, parts: dict, per_example_in_pipeline: float | None) -> float:
    total = sum(v for k, v in parts.items() if not k.startswith("decode whole"))
    print(f"\n  {title}")
    for k, v in parts.items():
        share = "" if k.startswith("decode whole") else f"{v / total:6.1%}"
        print(f"    {k:62s} {v * 1000:8.1f} ms {share}")
    print(f"    {'sum, one example after another (one process, 2 threads an op)':62s} {total * 1000:8.1f} ms")
    if per_example_in_pipeline:
        print(f"    {'tf.data, examples in parallel: s per example':62s} {per_example_in_pipeline * 1000:8.1f} ms "
              f"({total / per_example_in_pipeline:.2f}x the serial sum's pace)")
    return total


# ============================================================================ main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=30, help="batches to time per pipeline")
    ap.add_argument("--examples", type=int, default=12, help="images to time the parts on")
    ap.add_argument("--train-steps", type=int, default=40, help="cpu training steps per input (0: skip)")
    ap.add_argument("--t4-tflops", type=float, default=12.0)
    ap.add_argument("--root", type=Path, default=None, help="where the shards go (default: a temp folder)")
    ap.add_argument("--worker", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        kind, *rest = a.worker
        files = json.loads(Path(rest[-1]).read_text())
        out = (pipeline_worker(rest[0], rest[1], files, int(rest[2])) if kind == "pipeline"
               else train_worker(rest[0], files, int(rest[1])))
        print(json.dumps(out))
        return

    import tensorflow as tf
    from bench_coco_start import shards_of, step_flops

    root = a.root or Path(tempfile.mkdtemp(prefix="bench_input_"))
    files, what = shards_of(root)
    listing = root / "files.json"
    listing.write_text(json.dumps(files))
    print(f"Training input on {what}: {len(files)} shards; 2 CPU cores ({os.cpu_count()} here)")

    runs = {(prof, which): _child("pipeline", prof, which, a.batches, listing)
            for prof in ("colab", "cpu") for which in PIPELINES}

    cfg, task = _task("colab", files)
    records = [next(iter(tf.data.TFRecordDataset(f))) for f in files[:a.examples]]
    print(f"\n1. Parts of one example, colab profile (512 px crop); mean over {len(records)} images, "
          "each part timed on a second call (the first traces it)")
    per_ex = {w: runs[("colab", w)]["s_per_batch"] / 2 for w in PIPELINES}
    old_total = print_parts("old: window decoder + Model Garden's parser", old_parts(task, cfg.task.train_data, records),
                            per_ex["old"])
    new_total = print_parts("new: instance maps", new_parts(task, cfg.task.train_data, records), per_ex["new"])
    print(f"    serial sum old / new: {old_total / new_total:.1f}x")

    print(f"\n2. The pipelines ({a.batches} batches after 3 of warm-up, one process each)")
    print(f"    {'profile':8s} {'old s/batch':>12s} {'new s/batch':>12s} {'old/new':>8s} {'old RSS':>9s} {'new RSS':>9s}")
    for prof in ("colab", "cpu"):
        o, n = runs[(prof, "old")], runs[(prof, "new")]
        print(f"    {prof:8s} {o['s_per_batch']:12.3f} {n['s_per_batch']:12.3f} {o['s_per_batch'] / n['s_per_batch']:7.1f}x "
              f"{o['rss_mb'] / 1024:7.2f} GB {n['rss_mb'] / 1024:7.2f} GB")

    prof_obj = __import__("helpers.train.config", fromlist=["get_profile"]).get_profile("colab")
    flops = step_flops(_task("colab", files)[0], prof_obj)
    print(f"\n3. The colab step on a T4 (ESTIMATES: FLOPs at {a.t4_tflops:g} TFLOPS; the input measured here)")
    for stage in ("heads", "all"):
        gpu = flops[stage] / (a.t4_tflops * 1e12)
        o, n = runs[("colab", "old")]["s_per_batch"], runs[("colab", "new")]["s_per_batch"]
        print(f"    {stage:6s} GPU compute {flops[stage] / 1e12:.2f} TFLOP -> {gpu:.2f} s; "
              f"estimated s/step old {max(o, gpu):.2f} (input-bound: {o > gpu}), new {max(n, gpu):.2f} "
              f"(input-bound: {n > gpu}); {max(o, gpu) / max(n, gpu):.1f}x the steps an hour")

    if a.train_steps:
        print(f"\n4. The cpu profile's training from scratch, {a.train_steps} steps each (the first excluded)")
        tr = {w: _child("train", w, a.train_steps, listing) for w in PIPELINES}
        for w in PIPELINES:
            print(f"    {w}: {tr[w]['s_per_step']:.3f} s/step, {tr[w]['cores_busy']:.2f} cores busy, "
                  f"peak RSS {tr[w]['rss_mb'] / 1024:.2f} GB")
        print(f"    old / new s/step: {tr['old']['s_per_step'] / tr['new']['s_per_step']:.2f}x "
              f"(steps an hour: {3600 / tr['old']['s_per_step']:.0f} -> {3600 / tr['new']['s_per_step']:.0f})")


if __name__ == "__main__":
    main()
