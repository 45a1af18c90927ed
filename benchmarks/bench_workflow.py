"""End-to-end demo time and inference speed (issue: predict, evaluate, ensemble, submit).

    python benchmarks/bench_workflow.py [--skip-e2e] [--workspace DIR]

Prints, measured in this run:
* the README's demo (notebooks 01→05 headless, demo profile) in seconds, and its ratio to the
  10-minute target;
* inference s/image of the demo model (256×256, after warm-up), plain and with 2 flips;
* inference s/image of the full-size `colab` profile model on a 1000×1000 image on this CPU
  (random weights, detection floor 0, so all 2,000 detections are pasted: the worst case), and
  its ratio to the demo's.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_E2E_S = 600.0


def timed(fn, repeat: int = 3) -> float:
    fn()  # warm-up: traces the model for this input size
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def colab_model_s_per_image(size: int = 1000) -> float:
    import numpy as np
    import tensorflow as tf
    import tf_keras
    from official.vision.modeling import factory

    from helpers.train.configs import nuclei_maskrcnn as experiment
    from helpers.infer import predict

    params = experiment.experiment_config("colab", "all", accelerator="cpu")
    params.override({"task": {"model": {"detection_generator": {"pre_nms_score_threshold": 0.0}}}},
                    is_strict=True)
    model = factory.build_maskrcnn(input_specs=tf_keras.layers.InputSpec(shape=[None, None, None, 3]),
                                   model_config=params.task.model)
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return timed(lambda: predict.predict_detections(model, params, image, score_threshold=0.0), repeat=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", help="workspace for the demo run (default: a temp folder)")
    ap.add_argument("--skip-e2e", action="store_true", help="reuse --workspace's finished demo run")
    args = ap.parse_args(argv)

    from helpers.infer import predict
    from helpers.infer.model import load_model
    from helpers.notebooks import run_workflow

    root = Path(args.workspace or tempfile.mkdtemp(prefix="bench_workflow_"))
    if not args.skip_e2e:
        t0 = time.perf_counter()
        run_workflow("demo", workspace_root=root)
        e2e = time.perf_counter() - t0
        print(f"end-to-end demo (01→05): {e2e:.0f} s = {e2e / TARGET_E2E_S:.2f} × the 10-minute target")

    model, params = load_model(root, "all")
    ids = predict.image_ids_of(root, "val", "test")
    images = [predict.load_image(root, i) for i in ids]
    plain = timed(lambda: [predict.predict_detections(model, params, im) for im in images]) / len(images)
    flips = timed(lambda: [predict.predict_detections(model, params, im, a) for im in images
                           for a in (None, "hflip", "vflip")]) / len(images)
    print(f"demo inference: {plain:.3f} s/image plain, {flips:.3f} s/image with 2 flips "
          f"({flips / plain:.2f}×), {images[0].shape[0]}×{images[0].shape[1]} px")
    colab = colab_model_s_per_image()
    print(f"colab-profile inference on CPU, 1000×1000, 2,000 detections pasted: {colab:.1f} s/image "
          f"= {colab / plain:.0f}× the demo's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
