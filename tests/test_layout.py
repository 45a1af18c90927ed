"""helpers/ is layered: imports (at the top of a module or inside a function) point downward only.

The layers, lowest first: the shared top-level modules, then data/, train/ and infer/; within
each, the order below. A module may import only modules listed before it. The notebook glue
(``prepare``, ``training``, ``selection``, ``notebooks``) is imported by notebooks, never by
another helper. A new module must be given its place here.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

HELPERS = Path(__file__).resolve().parents[1] / "helpers"

LAYERS = {
    "": ("errors", "atomic", "progress", "tables", "colab", "workspace", "image_codec", "pixel_size", "polygons", "rle", "detections",
         "coco_format", "stain", "drawing", "parameters", "notebooks"),
    "data": ("organs", "dataset", "manifest", "imported", "label_images", "coco_annotations", "qupath_annotations", "layouts", "acquire", "demo_data", "shards/index", "shards/reader",
             "shards/writer", "shards/verify", "prepare"),
    "train": ("config", "runtime", "configs/nuclei_maskrcnn", "checkpoints", "background_save", "drive_copy",
              "torch_export", "torch_resnet", "torchvision_ops", "torch_convert", "pretrained", "train_input", "anchor_labels",
              "instance_map_input", "tasks/nuclei_maskrcnn", "stages",
              "stage_plan", "mirror", "runner", "curves", "train_progress", "training"),
    "infer": ("tta", "tiling", "model", "stain_normalization", "prediction_cache", "evaluate", "segmentation", "instance_metrics",
              "thresholds", "routing", "fusion",
              "strategy", "predict", "ranking", "rescore", "choice", "submission", "overlays", "exports", "selection", "own_images"),
}
GLUE = {"data/prepare", "train/training", "infer/selection", "infer/own_images", "notebooks"}
ORDER = [f"{room}/{m}" if room else m for room, modules in LAYERS.items() for m in modules]
ROOM = {key: key.split("/")[0] if "/" in key else "" for key in ORDER}


def key_of(path: Path) -> str:
    """``train/config`` for helpers/train/config.py: a module's place in :data:`LAYERS`."""
    return path.relative_to(HELPERS).with_suffix("").as_posix()


def _is_module(dotted: str) -> bool:
    """Whether ``helpers.a.b`` is a module or package (not a name defined in one)."""
    rel = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    return (HELPERS / rel).with_suffix(".py").is_file() or (HELPERS / rel).is_dir()


def helper_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, key)`` of every ``helpers`` module imported anywhere in ``tree`` (packages aside)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "helpers"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "helpers":
            # `from helpers.train import config` imports a module; `from helpers.x import name` a name of x
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                      if _is_module(f"{node.module}.{a.name}")]
    keys = [(line, "/".join(name.split(".")[1:])) for line, name in found]
    return [(line, key) for line, key in keys if key and not (HELPERS / key).is_dir()]


def upward_imports(path: Path, source: str | None = None) -> list[str]:
    """What module ``path`` (a helpers module) imports against the layering, as messages."""
    me = key_of(path)
    tree = ast.parse(path.read_text() if source is None else source)
    problems = []
    for line, target in helper_imports(tree):
        where = f"{path.relative_to(HELPERS.parent)}:{line} imports helpers/{target}"
        if target not in ROOM:
            problems.append(f"{where}: not a module listed in tests/test_layout.py")
        elif target != me and ORDER.index(target) > ORDER.index(me):
            problems.append(f"{where}: it lies above it")
        elif target in GLUE and target != me:
            problems.append(f"{where}: notebook glue, only notebooks import it")
    return problems


def modules() -> list[Path]:
    return sorted(p for p in HELPERS.rglob("*.py") if p.name != "__init__.py")


def test_every_module_has_its_place_in_its_room():
    for path in modules():
        assert key_of(path) in ROOM, f"{path}: add it to LAYERS in tests/test_layout.py"
    assert {key_of(p) for p in modules()} == set(ORDER), "LAYERS lists a module that does not exist"


@pytest.mark.parametrize("path", modules(), ids=key_of)
def test_imports_point_downward(path):
    assert upward_imports(path) == []


def test_the_check_sees_an_upward_import_inside_a_function():
    path = HELPERS / "train" / "config.py"
    source = path.read_text() + "\n\ndef _late():\n    from helpers.train.training import train_stage\n"
    assert any("training" in msg and "lies above" in msg for msg in upward_imports(path, source))
    late = path.read_text() + "\n\ndef _late():\n    from helpers.train.tasks import nuclei_maskrcnn\n"
    assert any("tasks/nuclei_maskrcnn" in msg and "lies above" in msg for msg in upward_imports(path, late))


def test_readme_layout_lists_every_module():
    """docs/layout.md's tree names each helpers module in its folder, no more."""
    import re

    text = (HELPERS.parent / "docs" / "layout.md").read_text()
    block = text[text.index("\nhelpers/ "):text.index("\nconstraints/ ")].splitlines()[2:]
    listed, rooms = set(), {}  # rooms: indent -> the folder opened at that indent
    for line in block:
        m = re.match(r"^((?:  ){1,3})(\S+)", line)
        if not m:
            continue
        depth = len(m.group(1)) // 2
        parents = "".join(rooms[d] for d in range(1, depth) if d in rooms)
        if m.group(2).endswith("/"):
            rooms = {d: r for d, r in rooms.items() if d < depth} | {depth: m.group(2)}
        else:
            listed.add(parents + m.group(2))
    assert listed == {p.relative_to(HELPERS).as_posix() for p in modules()}
