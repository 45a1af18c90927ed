"""Everything that only makes sense on Google Colab: detection, Drive, installs.

The notebooks' setup cell clones this project and calls ``setup(workspace_root=...)``, which on
Colab checks the runtime, mounts Drive if the workspace is there, installs what Colab lacks and
prints one status line. Off Colab it changes nothing (no mount, no install): the notebooks run
unchanged on a laptop, in CI, or headless under papermill.

``python -m helpers.colab install`` runs exactly the setup cell's install step (for a Colab-like
CI environment) and prints the status line.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from helpers.errors import UserError

DRIVE_MOUNTPOINT = Path("/content/drive")
DRIVE_FOLDER = "nuclei_workspace"
WORKSPACE_ENV_VAR = "NUCLEI_WORKSPACE"  # the default workspace off Colab (and on it, instead of Drive)
LOCAL_WORKSPACE_EXAMPLE = "/content/nuclei_workspace"
LOCAL_CHECKPOINTS = Path("/content/nuclei_local")  # the runtime's own disk: fast, lost at disconnect

# Import name -> pip name of the small packages official.vision (Mask R-CNN, our path) and our
# helpers import. Colab has all of them but torchstain (stain normalisation at prediction, numpy
# only); the install step adds only the ones a runtime lacks.
# (tf-models-official also declares e.g. tensorflow-model-optimization, seqeval, sacrebleu: the
# vision Mask R-CNN code never imports them, so they are not installed.)
SMALL_PACKAGES = {
    "gin": "gin-config",
    "immutabledict": "immutabledict",
    "yaml": "pyyaml",
    "pycocotools": "pycocotools",
    "cv2": "opencv-python-headless",
    "gdown": "gdown",
    "tqdm": "tqdm",
    "torchstain": "torchstain",
}

NO_TENSORFLOW = (
    "This runtime has no TensorFlow (Colab's TPU runtimes ship none), and this project trains "
    "with Colab's GPU TensorFlow. Choose Runtime → Change runtime type → a GPU runtime such as "
    "T4, then run this notebook again from the top."
)
DRIVE_REFUSED = (
    "Google Drive was not mounted ({error}). The workspace ({root}) is on Drive, so that "
    "shards, checkpoints and predictions survive a disconnect. Either run this cell again and "
    "allow access to Google Drive when asked, or set workspace_root in the parameters cell to a "
    f"local folder such as {LOCAL_WORKSPACE_EXAMPLE} (everything in it is lost when the runtime "
    "disconnects)."
)
# what tensorflow_datasets logs (absl.logging.exception in its __init__) when Model Garden imports
# it under Colab's protobuf 5.29.6: tensorflow_metadata's *_pb2 files are protoc 6.31 gencode, and
# google/protobuf/runtime_version.py raises VersionError with this message. TFDS is not used here.
PROTOBUF_GENCODE_MESSAGE = "Detected incompatible Protobuf Gencode/Runtime versions"


class SetupError(UserError, RuntimeError):
    """The runtime cannot run the notebooks as it is; the message says what to do."""


def drive_workspace() -> Path:
    """The workspace folder on the mounted Drive."""
    return DRIVE_MOUNTPOINT / "MyDrive" / DRIVE_FOLDER


def default_workspace() -> Path:
    """``$NUCLEI_WORKSPACE``, else the Drive folder on Colab, else ``./workspace`` (mounts nothing)."""
    if os.environ.get(WORKSPACE_ENV_VAR):
        return Path(os.environ[WORKSPACE_ENV_VAR]).expanduser()
    if in_colab():
        return drive_workspace()
    return Path("workspace")


def in_colab() -> bool:
    """True inside a Colab runtime (the ``google.colab`` package is importable)."""
    if "google.colab" in sys.modules:
        return True
    return importable("google.colab")


def importable(name: str) -> bool:
    """True if ``import name`` would find the module (without importing it)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing parent package, or a blocked import
        return False


def on_drive(path: str | os.PathLike) -> bool:
    """True if ``path`` is inside the Drive mountpoint."""
    path = Path(path).expanduser().absolute()
    return path == DRIVE_MOUNTPOINT or DRIVE_MOUNTPOINT in path.parents


def mount_drive(mountpoint: Path | None = None, root: str | os.PathLike | None = None) -> Path:
    """Mount Google Drive once per runtime (Colab asks for permission) and return the mountpoint.

    Declining the permission, or letting it time out, raises ``SetupError`` saying what to do.
    """
    mountpoint = Path(mountpoint or DRIVE_MOUNTPOINT)
    if (mountpoint / "MyDrive").is_dir():
        return mountpoint
    from google.colab import drive  # only exists on Colab

    try:
        drive.mount(str(mountpoint))
    except Exception as e:  # MessageError (declined, timed out), ValueError("mount failed"), ...
        error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise SetupError(DRIVE_REFUSED.format(error=error, root=root or drive_workspace())) from None
    return mountpoint


def ensure_drive(root: str | os.PathLike) -> bool:
    """On Colab, mount Drive if the workspace ``root`` is on it; True if it is."""
    if not (in_colab() and on_drive(root)):
        return False
    mount_drive(root=root)
    return True


# --- the install step -------------------------------------------------------------------------

def _major_minor(version: str) -> tuple[int, int]:
    parts = version.split(".")
    return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)


def _release_key(version: str) -> tuple[int, ...] | None:
    """Sort key of a final release "2.19.1"; None for pre-releases and other forms."""
    parts = version.split(".")
    if not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def version_note(tf_version: str, model_garden_version: str) -> str:
    """The one-line note when Model Garden's major.minor is not TensorFlow's ("" when it is)."""
    if _major_minor(model_garden_version) == _major_minor(tf_version):
        return ""
    mm = "%d.%d" % _major_minor(tf_version)
    return (f"no Model Garden {mm} release yet: {model_garden_version} is the newest not newer than "
            f"TensorFlow {tf_version}")


def install_plan(tf_version: str, releases=None, tf_keras_version: str | None = None,
                 missing: tuple[str, ...] = ()) -> tuple[list[str], str]:
    """The pip command of the install step, and its note.

    ``tf-models-official<X.(Y+1)`` for TensorFlow X.Y.z: pip takes the newest Model Garden release
    not newer than TensorFlow's major.minor (Model Garden 2.20 runs on TensorFlow 2.21 when there
    is no 2.21 release yet). Everything is installed with ``--no-deps``, so pip never replaces
    Colab's GPU TensorFlow (nor its numpy, protobuf, keras). ``tf-keras`` (same cap) is added only
    when it is absent (``tf_keras_version`` None) or its major.minor differs from TensorFlow's:
    Colab's own matching tf-keras is kept. ``missing``: pip names of other packages it lacks.

    ``releases`` (the Model Garden versions on PyPI), when given, say which release pip will pick:
    the note is then ready before installing. Without them the note is "" (see ``version_note``
    for the installed version). Raises ``SetupError`` when no release fits.
    """
    major, minor = _major_minor(tf_version)
    cap = f"<{major}.{minor + 1}"
    note = ""
    if releases is not None:
        fitting = [v for v in releases
                   if _release_key(v) is not None and _release_key(v)[:2] <= (major, minor)]
        if not fitting:
            raise SetupError(f"no tf-models-official release fits TensorFlow {tf_version} "
                             f"(releases: {', '.join(releases) or 'none'})")
        note = version_note(tf_version, max(fitting, key=_release_key))
    packages = [f"tf-models-official{cap}"]
    if tf_keras_version is None or _major_minor(tf_keras_version) != (major, minor):
        packages.append(f"tf-keras{cap}")
    packages += list(missing)
    return [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *packages], note


def run_quiet(cmd: list[str], what: str = "pip install") -> None:
    """Run ``cmd`` with its output captured; show the output only if it fails (``SetupError``).

    pip prints a red "ERROR: pip's dependency resolver does not currently take into account..."
    even when it succeeds with ``--no-deps``: that is not worth showing.
    """
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        raise SetupError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                         f"{proc.stdout.strip()}")


def _distribution_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def require_tensorflow() -> str:
    """TensorFlow's version (read without importing it); ``SetupError`` if there is none."""
    if not importable("tensorflow"):
        raise SetupError(NO_TENSORFLOW)
    version = _distribution_version("tensorflow", "tensorflow-cpu", "tensorflow-gpu",
                                    "tensorflow-tpu", "tf-nightly")
    if version is None:  # an unusual build: ask TensorFlow itself
        import tensorflow as tf

        version = tf.__version__
    return version


def install_model_garden() -> dict:
    """The setup cell's install step: Model Garden (and what else is missing), pip output hidden.

    Nothing is installed when ``official`` is already importable (a re-run, or a runtime restart).
    Returns ``tensorflow``, ``model_garden`` (versions), ``installed`` (bool) and ``note``.
    """
    tf_version = require_tensorflow()
    info = {"tensorflow": tf_version, "installed": False, "note": ""}
    if not importable("official"):
        tf_keras = _distribution_version("tf-keras", "tf_keras")
        missing = tuple(pip for module, pip in SMALL_PACKAGES.items() if not importable(module))
        cmd, _ = install_plan(tf_version, tf_keras_version=tf_keras, missing=missing)
        run_quiet(cmd)
        importlib.invalidate_caches()  # so that this kernel imports what pip just added
        info["installed"] = True
    info["model_garden"] = _distribution_version("tf-models-official") or "?"
    if info["model_garden"] != "?":
        info["note"] = version_note(tf_version, info["model_garden"])
    return info


# --- the notebooks' setup --------------------------------------------------------------------

def quiet() -> None:
    """Keep library chatter out of the notebooks (call before TensorFlow is first imported).

    TensorFlow's C++ logs at ERROR and above only (CUDA/XLA info and warnings; nothing at all
    on a machine without GPU, where CUDA's errors are all noise), absl (Model
    Garden's Python logs) likewise, minus TFDS's protobuf gencode/runtime traceback.
    """
    # Without a GPU, TensorFlow's CUDA build still logs "failed call to cuInit" at ERROR: noise.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if has_gpu() else "3")
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.set_verbosity(absl_logging.ERROR)
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _ProtobufGencodeFilter) for f in logger.filters):
        logger.addFilter(_ProtobufGencodeFilter())


class _ProtobufGencodeFilter(logging.Filter):
    """Drop only the record of protobuf's gencode/runtime VersionError (see PROTOBUF_GENCODE_MESSAGE)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "VersionError" \
                and type(exc).__module__ == "google.protobuf.runtime_version":
            return False
        return not str(record.msg).startswith(PROTOBUF_GENCODE_MESSAGE)


def _inline_figures() -> None:
    """In a notebook kernel, show returned matplotlib Figures inline (also under papermill)."""
    ip = _ipython()
    if ip is not None and getattr(ip, "kernel", None) is not None:
        ip.run_line_magic("matplotlib", "inline")


def _ipython():
    if "IPython" not in sys.modules:
        return None
    try:
        return sys.modules["IPython"].get_ipython()
    except AttributeError:
        return None


def has_gpu() -> bool:
    """An NVIDIA GPU is attached (checked without importing TensorFlow)."""
    return Path("/dev/nvidia0").exists() or Path("/dev/nvidiactl").exists()


def _runtime_label(colab: bool) -> str:
    if not colab:
        return "Local runtime (not Colab)"
    return "Colab GPU runtime" if has_gpu() else \
        "Colab runtime without GPU (to train: Runtime → Change runtime type → T4 GPU)"


def status_line(info: dict) -> str:
    """The one line the setup cell prints."""
    parts = [info["runtime"]] if info.get("runtime") else []
    if info.get("tensorflow"):
        parts.append(f"TensorFlow {info['tensorflow']}")
    if info.get("model_garden"):
        mg = f"Model Garden {info['model_garden']}"
        if "installed" in info:
            mg += " installed" if info["installed"] else " (already installed)"
        if info.get("note"):
            mg += f" ({info['note']})"
        parts.append(mg)
    if info.get("workspace"):
        parts.append(f"workspace {info['workspace']}")
    return " · ".join(parts)


def setup(workspace_root: str | os.PathLike | None = None, install: bool = True) -> dict:
    """The notebooks' setup cell, after the clone. Prints one status line; returns its facts.

    On Colab: stop with a clear ``SetupError`` on a runtime without TensorFlow; mount Drive only
    when the workspace (``workspace_root``, default the Drive folder) is on it; install Model
    Garden and what else is missing (not again when it is importable). Off Colab nothing is
    mounted or installed. Both quiet the libraries' logs (``quiet``) and show figures inline.
    """
    quiet()
    _inline_figures()
    colab = in_colab()
    info = {"colab": colab, "python": sys.version.split()[0], "runtime": _runtime_label(colab)}
    root = Path(workspace_root).expanduser() if workspace_root else default_workspace()
    if colab:
        info["tensorflow"] = require_tensorflow()
        if on_drive(root):
            info["drive"] = str(mount_drive(root=root))
        if install:
            info.update(install_model_garden())
    else:
        info["tensorflow"] = _distribution_version("tensorflow", "tensorflow-cpu")
        info["model_garden"] = _distribution_version("tf-models-official")
    info["workspace"] = str(root)
    print(status_line(info), flush=True)
    return info


# --- the end of a notebook: what to open next, and releasing the runtime -----------------------

GPU_NOT_NEEDED = ("01_prepare_shards",)  # the notebooks a CPU runtime runs as well
RELEASE_HINT = ("Release this runtime before you open the next notebook (Runtime → Disconnect and delete "
                "runtime, or tick release_runtime in this cell): a runtime left open keeps using your Colab "
                "quota. Everything this notebook made is in the workspace.")


def opened_from(project: str | os.PathLike | None = None) -> tuple[str, str]:
    """``(GitHub "owner/name", commit)`` the setup cell cloned this project from: the repository
    named in the clone's ``.git/FETCH_HEAD``, the commit its detached ``HEAD`` holds; ``("", "")``
    for a project not cloned from GitHub that way."""
    project = Path(project) if project else Path(__file__).resolve().parents[1]
    try:
        line = (project / ".git" / "FETCH_HEAD").read_text().splitlines()[0]
        commit = (project / ".git" / "HEAD").read_text().strip()
    except (OSError, IndexError):
        return "", ""
    found = re.search(r"github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?$", line)
    return (found[1], commit) if found and re.fullmatch(r"[0-9a-f]{40}", commit) else ("", "")


def colab_link(notebook: str, project: str | os.PathLike | None = None) -> str:
    """The Colab link of ``notebooks/<notebook>.ipynb`` at the commit this project was cloned from
    (\"\" when it was not cloned from GitHub by the setup cell)."""
    repo, commit = opened_from(project)
    if not repo:
        return ""
    return f"https://colab.research.google.com/github/{repo}/blob/{commit}/notebooks/{notebook}.ipynb"


def next_notebook(notebook: str | None, release_runtime: bool = False) -> None:
    """Print what to open next; on Colab, release this runtime if asked.

    ``notebook`` is the next notebook's name (``None`` after the last one). Colab bills a
    runtime until it is released, and each notebook runs in its own, so the message says to
    release it; ``release_runtime=True`` does it (``google.colab.runtime.unassign()``), which
    ends this notebook's session: everything it made is already in the workspace."""
    if notebook is None:
        lines = ["Done: this was the last notebook."]
    elif not in_colab():
        lines = [f"Next: notebook {notebook}."]
    else:
        runtime = "a CPU runtime is enough" if notebook in GPU_NOT_NEEDED else \
            "on a GPU runtime (Runtime → Change runtime type → T4 GPU)"
        link = colab_link(notebook)
        lines = [f"Next: notebook {notebook}, {runtime}" + (f": {link}" if link else ".")]
    if in_colab():
        lines.append("Releasing this runtime now." if release_runtime else RELEASE_HINT)
    text = "\n".join(lines)
    print(text, flush=True)
    if in_colab() and release_runtime:
        from google.colab import runtime  # only exists on Colab

        runtime.unassign()


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m helpers.colab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="run the setup cell's install step here and print the status line")
    ap.parse_args(argv)
    try:
        info = {"runtime": _runtime_label(in_colab()), **install_model_garden()}
    except SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(status_line(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
