"""Shared, cached demo training runs for the training/model/curves tests.

Runs live under pytest's session base temp. A second request for the same run
is answered by ``train_stage`` itself: the stage is finished, so it is skipped
(that is one of the behaviours under test), which lets several test files share
one trained run without a conftest fixture.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def demo_shards(base: Path) -> Path:
    """Demo dataset + its shards (written once per session)."""
    from helpers.data.demo_data import make_demo_dataset
    from helpers.data.manifest import read_manifest
    from helpers.data.shards import write_shards

    out = base / "demo_shards"
    if not (out / "index.json").is_file():
        root = make_demo_dataset(base / "demo_data", seed=0)
        rows = read_manifest(root / "data_manifest.csv")
        write_shards(root, rows, out, progress=False, verbose=False)
    return out


def demo_dataset(base: Path) -> Path:
    demo_shards(base)
    return base / "demo_data"


def new_workspace(base: Path, name: str, copy_from: Path | None = None):
    """A workspace with the demo shards, optionally a copy of another workspace's checkpoints."""
    from helpers.workspace import get_workspace

    ws = get_workspace(base / name)
    shards = demo_shards(base)
    for f in shards.iterdir():
        if not (ws.shards / f.name).exists():
            shutil.copy2(f, ws.shards / f.name)
    if copy_from is not None:
        shutil.rmtree(ws.checkpoints)
        shutil.copytree(Path(copy_from) / "checkpoints", ws.checkpoints)
    return ws


_FIRST_RESULTS: dict = {}  # (base, stage) -> StageResult of the run that trained it


def trained(base: Path, stages=("heads",)):
    """Workspace ``base/trained`` with the demo stages run to the end; returns (ws, results).

    Results are those of the run that actually trained each stage, whichever
    test file asked first (this module is imported once per session).
    """
    from helpers.train.training import train_stage

    ws = new_workspace(base, "trained")
    for s in stages:
        if (str(base), s) not in _FIRST_RESULTS:
            _FIRST_RESULTS[(str(base), s)] = train_stage(s, "demo", ws, progress=False)
    return ws, {s: _FIRST_RESULTS[(str(base), s)] for s in stages}


def run_child(code: str, timeout: float = 600, **popen) -> subprocess.Popen:
    """Start ``python -c code`` in the repo (for SIGKILL / logical-device tests)."""
    import os

    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def file_snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def backbone_vars(prefix) -> dict:
    """{name: array} of the backbone variables stored in a checkpoint."""
    import tensorflow as tf

    r = tf.train.load_checkpoint(str(prefix))
    return {k: r.get_tensor(k) for k in r.get_variable_to_shape_map()
            if k.startswith("backbone/") and "OPTIMIZER_SLOT" not in k}


NOT_MODEL = ("optimizer", "global_step", "save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH")


def model_vars(prefix) -> dict:
    """{name: array} of every model variable (Model Garden stores the model's parts
    -- backbone, decoder, heads -- as top-level checkpoint items)."""
    import tensorflow as tf

    r = tf.train.load_checkpoint(str(prefix))
    return {k: r.get_tensor(k) for k in r.get_variable_to_shape_map()
            if k.split("/")[0] not in NOT_MODEL and "OPTIMIZER_SLOT" not in k}


def optimizer_iterations(prefix) -> int:
    import tensorflow as tf

    return int(tf.train.load_checkpoint(str(prefix)).get_tensor("optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE"))


def tear(stage_dir: Path, step: int) -> Path:
    """Cut checkpoint ``step``'s data file in half, as a kill in mid-write leaves it; its path."""
    data = next(Path(stage_dir).glob(f"ckpt-{step}.data-*"))
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)
    return data
