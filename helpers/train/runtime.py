"""The runtime a stage trains on: its accelerator, its ``tf.distribute`` strategy, its seed and
its mixed-precision policy (Model Garden's ``RuntimeConfig`` set up, as ``train_lib`` expects).

TensorFlow is imported on first use, not with this module.
"""
from __future__ import annotations

import os


def detect_accelerator() -> str:
    """'tpu', 'gpu' or 'cpu' for the current runtime (does not touch the network)."""
    import tensorflow as tf

    if os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME"):
        return "tpu"
    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def pick_strategy(strategy=None):
    """TPUStrategy on a TPU, MirroredStrategy on several GPUs, else the default strategy.

    ``strategy`` may be a ``tf.distribute.Strategy`` (used as is) or one of
    ``"tpu"``, ``"mirrored"`` (all GPUs, or all logical CPUs when there is
    no GPU), ``"default"``.
    """
    import tensorflow as tf
    from official.common import distribute_utils

    if isinstance(strategy, tf.distribute.Strategy):
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    if strategy is None:
        acc = detect_accelerator()
        strategy = "tpu" if acc == "tpu" else ("mirrored" if len(gpus) > 1 else "default")
    if strategy == "tpu":
        addr = os.environ.get("COLAB_TPU_ADDR")
        return distribute_utils.get_distribution_strategy(
            "tpu", tpu_address=f"grpc://{addr}" if addr else os.environ.get("TPU_NAME", "local"))
    if strategy == "mirrored":
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if strategy == "default":
        return tf.distribute.get_strategy()
    raise ValueError(f"unknown strategy {strategy!r}; use 'tpu', 'mirrored' or 'default'")


def set_up(cfg, prof, strategy=None):
    """Seed, mixed-precision policy and quiet logs for ``cfg`` (an ExperimentConfig of profile
    ``prof``); returns the strategy to build the task under (:func:`pick_strategy`)."""
    import tensorflow as tf
    from official.modeling import performance

    if prof.seed is not None:  # the model's initial weights and the input order
        tf.keras.utils.set_random_seed(prof.seed)
    if prof.name == "colab" and detect_accelerator() == "cpu":
        print(f"note: profile 'colab' on a machine without GPU is very slow ({prof.backbone}, "
              f"batch {prof.images_per_batch}); profile 'cpu' is made for this case (a different stage config).")
    performance.set_mixed_precision_policy(tf.dtypes.as_dtype(cfg.runtime.mixed_precision_dtype))
    tf.get_logger().setLevel("ERROR")  # Model Garden's deprecation/INFO lines drown the progress line
    return pick_strategy(strategy)
