"""Everything that only makes sense on Google Colab: detection, Drive, installs.

Off Colab every function here is a no-op or a local fallback, so the notebooks
run unchanged on a laptop, in CI, or headless under papermill.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

DRIVE_MOUNTPOINT = Path("/content/drive")
DRIVE_FOLDER = "nuclei_workspace"


def drive_workspace() -> Path:
    """The workspace folder on the mounted Drive."""
    return DRIVE_MOUNTPOINT / "MyDrive" / DRIVE_FOLDER


def in_colab() -> bool:
    """True inside a Colab runtime (the ``google.colab`` package is importable)."""
    if "google.colab" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):
        return False


def mount_drive(mountpoint: Path | None = None) -> Path:
    """Mount Google Drive (asks for permission once per runtime) and return the mountpoint."""
    from google.colab import drive  # only exists on Colab

    mountpoint = Path(mountpoint or DRIVE_MOUNTPOINT)
    if not (mountpoint / "MyDrive").exists():
        drive.mount(str(mountpoint))
    return mountpoint


def colab_install_commands(tf_version: str) -> list[list[str]]:
    """The pip command the Colab setup cell runs.

    Colab ships a GPU build of TensorFlow. Installing ``tf-models-official``
    with its dependencies would replace it with another TensorFlow wheel, so
    we install the Model Garden release that matches Colab's TensorFlow
    (major.minor) with ``--no-deps`` and add only the small packages that
    ``official.vision`` imports and Colab lacks.
    """
    major_minor = ".".join(tf_version.split(".")[:2])
    return [[
        sys.executable, "-m", "pip", "install", "-q",
        f"tf-models-official=={major_minor}.*", "--no-deps",
    ], [

        sys.executable, "-m", "pip", "install", "-q",
        f"tf-keras=={major_minor}.*", "gin-config", "immutabledict",
        "tensorflow-model-optimization", "pycocotools", "gdown", "tqdm",
    ]]


def _inline_figures() -> None:
    """In a notebook kernel, show returned matplotlib Figures inline (also under papermill)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is not None and getattr(ip, "kernel", None) is not None:
        ip.run_line_magic("matplotlib", "inline")


def setup(install: bool = True) -> dict:
    """Notebook setup cell: on Colab install what is missing and mount Drive.

    Returns a small dict describing the runtime, for the notebook to show.
    """
    info = {"colab": in_colab(), "python": sys.version.split()[0]}
    _inline_figures()
    if not info["colab"]:
        return info
    if install and importlib.util.find_spec("official") is None:
        import tensorflow as tf

        for cmd in colab_install_commands(tf.__version__):
            subprocess.run(cmd, check=True)
        info["installed_model_garden_for_tf"] = tf.__version__
    info["drive"] = str(mount_drive())
    return info
