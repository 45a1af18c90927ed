"""The colab profile's COCO start on a free Colab T4: what can be measured here, and the estimate.

    python benchmarks/bench_coco_start.py               # real data from ../shared (else synthetic)
    python benchmarks/bench_coco_start.py --steps 3     # CPU training steps to time (0: none)

Prints, from one run:
  * the training input alone (2 crops of 512 px per batch; ``bench_input.py`` compares it with
    the former one, part by part) on this machine's 2 cores, as on Colab: s/batch and the
    process's peak RSS;
  * the training FLOPs of one step, counted by TensorFlow's profiler on the colab model
    (backbone, FPN and RPN on 2 x 512^2, box head on 2 x 512 ROIs, mask head on 2 x 256),
    for the heads stage (backbone frozen: no backward pass through it) and for `all`;
  * with --steps: s/step of the colab profile on this CPU (a few steps after warm-up);
  * on the real data, the nuclei's box sides against the mask head's 28 px output, per scale;
  * the estimated T4 s/step and hours per stage: the larger of the input pipeline and
    FLOPs / an effective T4 rate (--t4-tflops, default 12: a fifth of the T4's 65 TFLOPS
    float16 peak, what detection training reaches with mixed precision). An estimate: no GPU
    with TensorFlow is reachable here.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "vrdl_hw3"


def shards_of(root: Path) -> tuple[list[str], str]:
    """Training shard files: the real dataset's when ../shared has it, else synthetic 1000 px."""
    from helpers.data import shards
    from helpers.workspace import get_workspace

    ws = get_workspace(root / "ws")
    if DATA.is_dir():
        from helpers.data import prepare as prep

        dataset_root, manifest = prep.get_dataset(ws, str(DATA), "colab")
        rows = prep.choose_split(ws, prep.check_dataset(dataset_root, manifest))
        shards.write_shards(dataset_root, rows, ws.shards, progress=False, verbose=False)
        what = "the real training images"
    else:
        from benchmarks.bench_training import make_shards

        ws.shards.rmdir()
        ws.shards.symlink_to(make_shards(root, 1000, 6), target_is_directory=True)
        what = "synthetic 1000x1000 images (../shared absent)"
    files = [str(p) for p in shards.select_shards(ws.shards, splits=("train",))]
    return files, what


def input_pipeline(cfg, batches: int) -> float:
    from helpers.train.tasks.nuclei_maskrcnn import NucleiMaskRCNNTask

    ds = iter(NucleiMaskRCNNTask(cfg.task).build_inputs(cfg.task.train_data))
    next(ds)  # the first batch fills the shuffle buffer and traces the parser
    t = time.perf_counter()
    for _ in range(batches):
        next(ds)
    return (time.perf_counter() - t) / batches


def flops_of(fn, *specs) -> float:
    import tensorflow as tf
    from tensorflow.python.profiler import model_analyzer, option_builder

    graph = tf.function(fn).get_concrete_function(*specs).graph
    opts = option_builder.ProfileOptionBuilder(option_builder.ProfileOptionBuilder.float_operation()
                                               ).with_empty_output().build()
    return float(model_analyzer.profile(graph, options=opts).total_float_ops)


def step_flops(cfg, prof) -> dict:
    """Forward FLOPs of one training step's parts, and the heads/all training totals."""
    import tensorflow as tf

    from helpers.train.tasks.nuclei_maskrcnn import NucleiMaskRCNNTask

    model = NucleiMaskRCNNTask(cfg.task).build_model()
    b, side = prof.images_per_batch, prof.crop_size
    dense = flops_of(lambda x: model.rpn_head(model.decoder(model.backbone(x))),
                     tf.TensorSpec([b, side, side, 3], tf.float32))
    backbone = flops_of(lambda x: model.backbone(x), tf.TensorSpec([b, side, side, 3], tf.float32))
    head = model.detection_head[0]
    box = flops_of(lambda f: head(f), tf.TensorSpec([b, prof.num_sampled_rois, 7, 7, prof.fpn_filters]))
    mask = flops_of(lambda f, c: model.mask_head([f, c]),
                    tf.TensorSpec([b, prof.num_sampled_masks, 14, 14, prof.fpn_filters]),
                    tf.TensorSpec([b, prof.num_sampled_masks], tf.int32))
    rest = dense - backbone + box + mask
    # backward ~ 2x forward for what trains; the frozen backbone of `heads` has no backward pass
    return {"backbone": backbone, "fpn+rpn": dense - backbone, "box head": box, "mask head": mask,
            "heads": backbone + 3 * rest, "all": 3 * (backbone + rest)}


def cpu_steps(files, steps: int) -> float:
    from helpers.train import torch_convert as tc
    from helpers.train.training import plan_stage, train_stage
    from helpers.workspace import get_workspace

    ws = get_workspace(Path(tempfile.mkdtemp(prefix="coco_cpu_")))
    _, cfg, _ = plan_stage("heads", "colab", ws, steps=steps + 1, train_files=files, accelerator="cpu")
    # the converter's output for a random-weight start: the same architecture, no download
    from official.vision.tasks import maskrcnn as mg_task

    model = mg_task.MaskRCNNTask(cfg.task).build_model()
    modules = cfg.task.init_checkpoint_modules
    tc.write_converted(tc.cache_folder(ws.root, "coco", cfg.task.model, modules), tc.transferable_items(model, modules),
                       {"source": "random (benchmark)", "modules": modules,
                        "architecture": tc.weight_architecture(cfg.task.model)})
    return train_stage("heads", "colab", ws, steps=steps + 1, train_files=files, progress=False).s_per_step


def nucleus_sizes(data: Path) -> None:
    """The sides of the real nuclei's boxes (native px), against the mask head's 28 x 28 output
    (upsample_factor 2) and what a 56 x 56 one (upsample_factor 4) would add, at each scale."""
    import numpy as np
    from PIL import Image

    sides = []
    for mask in sorted((data / "train").glob("*/masks/*.png")):
        m = np.asarray(Image.open(mask)) > 0
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        if rows.size:
            sides.append(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))
    sides = np.array(sides)
    q = np.percentile(sides, [5, 50, 95, 99])
    print(f"  nuclei: {sides.size}; box side (native px) p5 {q[0]:.0f}, median {q[1]:.0f}, p95 {q[2]:.0f}, "
          f"p99 {q[3]:.0f}, max {sides.max()}")
    for scale in (1.0, 1.5, 2.0):
        big = float(np.mean(sides * scale > 28))
        print(f"  scale {scale}: {big:.1%} of nuclei are wider than the 28 px mask output "
              f"(a 56 px output would resolve them; {np.mean(sides * scale > 56):.1%} wider than 56)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=20, help="input batches to time")
    ap.add_argument("--steps", type=int, default=0, help="colab training steps to time on this CPU")
    ap.add_argument("--t4-tflops", type=float, default=12.0, help="effective T4 TFLOPS assumed")
    ap.add_argument("--no-sizes", action="store_true", help="skip the nucleus size figures (real data)")
    a = ap.parse_args(argv)
    from helpers.train.config import get_profile
    from helpers.train.configs.nuclei_maskrcnn import experiment_config

    prof = get_profile("colab")
    root = Path(tempfile.mkdtemp(prefix="bench_coco_"))
    files, what = shards_of(root)
    cfg = experiment_config(prof, "heads", files, accelerator="gpu")  # float16 input, as on Colab
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    s_input = input_pipeline(cfg, a.batches)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(f"colab profile, {prof.images_per_batch} x {prof.crop_size}^2 crops of {what}, {os.cpu_count()} cores")
    print(f"  input pipeline alone:  {s_input:.3f} s/batch over {a.batches} batches; "
          f"peak RSS {rss:.1f} GB (before the pipeline {rss0:.1f} GB)")
    fl = step_flops(experiment_config(prof, "heads", files, accelerator="cpu"), prof)
    print("  forward GFLOPs per step: " + ", ".join(f"{k} {fl[k] / 1e9:.0f}" for k in
                                                     ("backbone", "fpn+rpn", "box head", "mask head")))
    for stage in ("heads", "all"):
        gpu = fl[stage] / (a.t4_tflops * 1e12)
        est = max(gpu, s_input)
        hours = est * prof.steps[stage] / 3600
        print(f"  {stage:5s}: {fl[stage] / 1e12:.2f} TFLOP per training step -> {gpu:.2f} s at {a.t4_tflops:g} "
              f"TFLOPS; estimated T4 s/step {est:.2f} (the larger of that and the input pipeline); "
              f"{prof.steps[stage]} steps = {hours:.2f} h (estimate)")
    if DATA.is_dir() and not a.no_sizes:
        nucleus_sizes(DATA)
    if a.steps:
        print(f"  this CPU: {cpu_steps(files, a.steps):.1f} s/step (colab heads, {a.steps} steps after the first)")


if __name__ == "__main__":
    main()
