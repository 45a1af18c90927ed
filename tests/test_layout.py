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
    "": ("atomic", "progress", "colab", "workspace", "coco_format", "stain", "drawing", "notebooks"),
    "data": ("organs", "dataset", "manifest", "acquire", "demo_data", "shards", "prepare"),
    "train": ("config", "experiment", "checkpoints", "background_save", "drive_copy", "torch_export",
              "torch_convert", "train_input", "stages", "mirror", "curves", "training"),
    "infer": ("tta", "tiling", "model", "prediction_cache", "evaluate", "instance_metrics", "ensemble", "predict",
              "ranking", "rescore", "submission", "overlays", "exports", "selection", "own_images"),
}
GLUE = {"prepare", "training", "selection", "own_images", "notebooks"}
ORDER = [m for modules in LAYERS.values() for m in modules]
ROOM = {m: room for room, modules in LAYERS.items() for m in modules}


def helper_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every ``helpers`` module imported anywhere in ``tree``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "helpers"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "helpers":
            # `from helpers.train import config` imports a module; `from helpers.x import name` a name of x
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                      if f"{node.module}.{a.name}".split(".")[-1] in ROOM]
            if node.module.split(".")[-1] in ROOM:
                found.append((node.lineno, node.module))
    return found


def upward_imports(path: Path, source: str | None = None) -> list[str]:
    """What module ``path`` (a helpers module) imports against the layering, as messages."""
    me = path.stem
    tree = ast.parse(path.read_text() if source is None else source)
    problems = []
    for line, name in helper_imports(tree):
        target = name.split(".")[-1]
        where = f"{path.relative_to(HELPERS.parent)}:{line} imports {name}"
        if target not in ROOM:
            problems.append(f"{where}: not a module listed in tests/test_layout.py")
        elif target != me and ORDER.index(target) > ORDER.index(me):
            problems.append(f"{where}: it lies above ({ROOM[target] or 'top'}/{target})")
        elif target in GLUE and target != me:
            problems.append(f"{where}: notebook glue, only notebooks import it")
    return problems


def modules() -> list[Path]:
    return sorted(p for p in HELPERS.rglob("*.py") if p.name != "__init__.py")


def test_every_module_has_its_place_in_its_room():
    for path in modules():
        assert path.stem in ROOM, f"{path}: add it to LAYERS in tests/test_layout.py"
        room = path.parent.relative_to(HELPERS).as_posix()
        assert ROOM[path.stem] == ("" if room == "." else room), f"{path} belongs in helpers/{ROOM[path.stem]}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.stem)
def test_imports_point_downward(path):
    assert upward_imports(path) == []


def test_the_check_sees_an_upward_import_inside_a_function():
    path = next(p for p in modules() if p.stem == "config")
    source = path.read_text() + "\n\ndef _late():\n    from helpers.train.training import train_stage\n"
    assert any("training" in msg and "lies above" in msg for msg in upward_imports(path, source))


def test_readme_layout_lists_every_module():
    """The README's "Where things live" tree names each helpers module in its folder, no more."""
    import re

    text = (HELPERS.parent / "README.md").read_text()
    block = text[text.index("\nhelpers/ "):text.index("\nconstraints/ ")].splitlines()[2:]
    listed, room = set(), ""
    for line in block:
        m = re.match(r"^  (  )?(\S+)", line)
        if m and m.group(2).endswith("/"):
            room = m.group(2)
        elif m:
            listed.add(f"{room if m.group(1) else ''}{m.group(2)}")
    assert listed == {p.relative_to(HELPERS).as_posix() for p in modules()}
