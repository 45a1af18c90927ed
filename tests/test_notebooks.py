"""helpers.notebooks: the notebooks run headless with papermill, each with its own parameters."""
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import notebooks

REPO = Path(__file__).resolve().parents[1]
# papermill and the Jupyter kernel of the installed versions: the Colab-like env runs them (`-m colab`)
pytestmark = pytest.mark.colab


def _notebooks():
    return notebooks.workflow_notebooks()


def test_profile_parameters_are_declared_by_some_notebook():
    declared = notebooks.check_parameters({}, _notebooks())
    known = {n for names in declared.values() for n in names}
    for params in notebooks.PROFILE_PARAMETERS.values():
        assert set(params) <= known


def test_papermill_reads_every_parameters_cell_without_a_warning(caplog):
    """A parameter line with a second '=' (say, in its comment) is skipped by papermill, which
    logs 'Unable to parse line' to the user's console."""
    import papermill

    for nb in _notebooks():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="papermill"):
            names = papermill.inspect_notebook(str(nb))
        assert not caplog.records, f"{nb.name}: {caplog.records[0].getMessage()}"
        assert {"profile", "workspace_root"} <= set(names), nb.name


def test_unknown_parameter_is_a_clear_error_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="no notebook declares the parameter.* stepz") as e:
        notebooks.run_workflow("demo", parameters={"stepz": 3}, workspace_root=tmp_path / "ws")
    assert "02_train_heads.ipynb: " in str(e.value) and not (tmp_path / "ws").exists()
    with pytest.raises(ValueError, match="01_prepare_shards.ipynb does not declare .*steps"):
        notebooks.run_notebook(_notebooks()[0], {"steps": 3}, tmp_path / "ws")
    proc = subprocess.run([sys.executable, "-m", "helpers.notebooks", "-p", "stepz", "3"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "no notebook declares the parameter(s) stepz" in proc.stderr


def _tiny_notebook(path: Path, names: list[str]):
    import nbformat

    params = nbformat.v4.new_code_cell("\n".join(f"{n} = None" for n in names))
    params.metadata["tags"] = ["parameters"]
    show = nbformat.v4.new_code_cell(f"print(sorted((k, v) for k, v in dict({', '.join(f'{n}={n}' for n in names)}).items() if v is not None))")
    nb = nbformat.v4.new_notebook(cells=[params, show])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))


def test_each_notebook_gets_only_the_parameters_it_declares(tmp_path, monkeypatch, caplog, capfd):
    books = tmp_path / "books"
    books.mkdir()
    _tiny_notebook(books / "01_a.ipynb", ["profile", "workspace_root", "seed"])
    _tiny_notebook(books / "02_b.ipynb", ["profile", "workspace_root", "steps"])
    monkeypatch.setattr(notebooks, "NOTEBOOK_DIR", books)
    ws = tmp_path / "ws"
    with caplog.at_level(logging.WARNING, logger="papermill"):
        runs = notebooks.run_workflow("demo", parameters={"seed": 7}, workspace_root=ws)
    assert not [r for r in caplog.records if "unknown parameter" in r.getMessage()]
    console = capfd.readouterr()
    assert "WARNING" not in console.err and "Kernel is running" not in console.err  # the kernel's own
    assert (ws / "runs" / "01_a.kernel.log").is_file()
    printed = ["".join(json.loads(p.read_text())["cells"][-1]["outputs"][0]["text"]) for p in runs]
    ws_root = str(ws.resolve())
    assert printed[0] == f"[('profile', 'demo'), ('seed', 7), ('workspace_root', '{ws_root}')]\n"
    assert printed[1] == f"[('profile', 'demo'), ('steps', 150), ('workspace_root', '{ws_root}')]\n"


def _one_cell_notebook(path, code: str):
    """A notebook of a parameters cell and one cell of ``code``, written to ``path``."""
    import nbformat

    cells = [nbformat.v4.new_code_cell("workspace_root = None"), nbformat.v4.new_code_cell(code)]
    cells[0].metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def test_native_log_lines_stay_out_of_the_notebook_and_the_console(tmp_path, capfd):
    """TensorFlow's C++ logs write straight to file descriptor 2 (TF_CPP_MIN_LOG_LEVEL misses some)."""
    line = "W0000 00:00:1795674489.435274   13711 op_level_cost_estimator.cc:699] Error in PredictCost()"
    code = f"import os, sys\nos.write(2, b'{line}\\n')\nprint('result'); print('python warning', file=sys.stderr)"
    out = notebooks.run_notebook(_one_cell_notebook(tmp_path / "native.ipynb", code), workspace_root=tmp_path / "ws")
    outputs = json.loads(out.read_text())["cells"][-1]["outputs"]
    texts = {o["name"]: "".join(o["text"]) for o in outputs}
    assert texts == {"stdout": "result\n", "stderr": "python warning\n"}  # Python's own output stays
    assert line not in capfd.readouterr().err
    assert line in (tmp_path / "ws" / "runs" / "native.kernel.log").read_text()


def test_the_kernel_makes_text_bars_and_this_process_keeps_its_environment(tmp_path, monkeypatch):
    """The headless kernel learns from its environment (NUCLEI_TEXT_PROGRESS) that its bars are text
    lines saved in the notebook, with or without ipywidgets; the calling process's own
    environment, and so its bars, are left as they were."""
    import os

    from helpers import progress

    monkeypatch.delenv(progress.TEXT_ENV, raising=False)
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    code = (f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
            "from helpers.progress import text_bars, tqdm\nprint(text_bars())\nfor _ in tqdm(range(3)): pass")
    out = notebooks.run_notebook(_one_cell_notebook(tmp_path / "bars.ipynb", code), workspace_root=tmp_path / "ws")
    outputs = json.loads(out.read_text())["cells"][-1]["outputs"]
    stream = {name: "".join("".join(o["text"]) for o in outputs if o.get("name") == name)
              for name in ("stdout", "stderr")}
    assert stream["stdout"] == "True\n" and "3/3" in stream["stderr"], outputs
    assert progress.TEXT_ENV not in os.environ and "TQDM_MININTERVAL" not in os.environ



def test_set_repo_url_points_notebooks_and_badges_at_a_fork(tmp_path):
    shutil.copytree(REPO / "notebooks", tmp_path / "notebooks")
    shutil.copy2(REPO / "README.md", tmp_path / "README.md")
    url = "https://github.com/alice/nuclei-maskrcnn"
    changed = notebooks.set_repo_url(url, tmp_path)
    assert len(changed) == 7 and tmp_path / "README.md" in changed
    for nb in sorted((tmp_path / "notebooks").glob("0*.ipynb")):
        params = notebooks.declared_parameters(nb)
        assert "REPO_URL" in params
        src = "".join(json.loads(nb.read_text())["cells"][1]["source"])
        assert f'REPO_URL = "{url}"' in src and "OWNER/" not in src
        assert json.loads(nb.read_text())["cells"][2] == json.loads(
            (REPO / "notebooks" / nb.name).read_text())["cells"][2]  # the setup cell is untouched
    readme = (tmp_path / "README.md").read_text()
    assert readme.count("colab.research.google.com/github/alice/nuclei-maskrcnn/blob/main/notebooks/") == 6
    assert "github/OWNER" not in readme
    assert notebooks.set_repo_url(url, tmp_path) == []  # already set: nothing rewritten
    with pytest.raises(ValueError, match="not a git URL"):
        notebooks.set_repo_url("https://github.com/OWNER/nuclei-maskrcnn", tmp_path)


@pytest.mark.parametrize("url", ['https://github.com/alice/nuclei"', 'https://github.com/a/b";__import__("os").system("touch pwned");"',
                                 "https://github.com/a/b c", "file:///etc", "https://github.com/a/b\\"])
def test_set_repo_url_refuses_what_is_not_a_git_url_and_changes_nothing(tmp_path, url):
    shutil.copytree(REPO / "notebooks", tmp_path / "notebooks")
    before = {p.name: p.read_bytes() for p in (tmp_path / "notebooks").iterdir()}
    with pytest.raises(ValueError, match="not a git URL"):
        notebooks.set_repo_url(url, tmp_path)
    assert {p.name: p.read_bytes() for p in (tmp_path / "notebooks").iterdir()} == before


def test_set_repo_url_writes_a_literal_and_repairs_a_broken_line(tmp_path):
    """The URL becomes a Python string, and a REPO_URL line broken by an older version (a stray
    quote) is replaced whole, its form comment kept: every parameters cell compiles again."""
    import ast

    shutil.copytree(REPO / "notebooks", tmp_path / "notebooks")
    for nb_path in (tmp_path / "notebooks").glob("0*.ipynb"):  # what an unescaped '"' once left
        nb_path.write_text(nb_path.read_text().replace('REPO_URL = \\"https://github.com/OWNER/nuclei-maskrcnn\\"',
                                                       'REPO_URL = \\"https://github.com/a/b\\"\\"'))
    url = "git@github.com:alice/nuclei-maskrcnn.git"
    assert len(notebooks.set_repo_url(url, tmp_path)) == 6
    for nb_path in sorted((tmp_path / "notebooks").glob("0*.ipynb")):
        cell = json.loads(nb_path.read_text())["cells"][1]
        tree = ast.parse("".join(cell["source"]))  # a SyntaxError before the repair
        values = {n.targets[0].id: n.value for n in tree.body if isinstance(n, ast.Assign)}
        assert ast.literal_eval(values["REPO_URL"]) == url
        assert 'REPO_URL = "git@github.com:alice/nuclei-maskrcnn.git"  #@param {type:"string"}' in "".join(
            cell["source"]), nb_path.name


@pytest.mark.parametrize("argv, message", [
    (["--upto", ""], "no notebook in .* starts with ''"),
    (["--upto", "07"], "no notebook in .* starts with '07'"),
    (["--workspace", "/etc/passwd"], "/etc/passwd is a file, not a folder"),
    (["-p", "profile", "big"], "set the profile with --profile"),
])
def test_a_wrong_command_line_is_one_clear_line_before_anything_runs(tmp_path, argv, message):
    proc = subprocess.run([sys.executable, "-m", "helpers.notebooks", *argv], cwd=REPO, capture_output=True,
                          text=True, env={**__import__("os").environ, "NUCLEI_WORKSPACE": str(tmp_path / "ws")})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and __import__("re").search(message, proc.stderr), proc.stderr
    assert not (tmp_path / "ws" / "runs").exists() or not any((tmp_path / "ws" / "runs").iterdir())


def test_every_notebook_parameter_has_a_kind_its_default_fits():
    """helpers/parameters.py knows every declared parameter, and every notebook checks them."""
    import ast

    from helpers.parameters import PARAMETERS, check_parameters

    for nb in _notebooks():
        cells = json.loads(nb.read_text())["cells"]
        params = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
        tree = ast.parse("".join(params["source"]))
        defaults = {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)}
        assert set(defaults) <= set(PARAMETERS), (nb.name, set(defaults) - set(PARAMETERS))
        check_parameters({**defaults, **notebooks.PROFILE_PARAMETERS["demo"]})
        assert any("check_parameters(globals())" in "".join(c["source"]) for c in cells), nb.name


def test_list_dict_and_none_parameters_are_colab_form_fields_too():
    """A list, a dict or None is a raw form field on Colab: every parameter is in the form."""
    for nb in _notebooks():
        cells = json.loads(nb.read_text())["cells"]
        params = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
        for line in "".join(params["source"]).splitlines():
            if " = " in line and not line.startswith("#"):
                value = line.split(" = ", 1)[1]
                if value.startswith(("[", "{", "None")):
                    assert value.endswith('#@param {type:"raw"}'), (nb.name, line)


@pytest.mark.parametrize("name, value, takes", [
    ("steps", "abc", "a whole number of 0 or more"), ("seed", "abc", "a whole number"),
    ("min_score", "high", "None or a number from 0.0 to 1.0"), ("tta", "hflip", "None or a list of names"),
    ("val_ids", "TCGA-1", "a list of names"), ("from_scratch", "yes", "True or False"),
    ("tile", 8, "a whole number of 64 or more"), ("profile", "big", "one of 'colab', 'cpu', 'demo'"),
])
def test_a_parameter_of_the_wrong_kind_is_named_with_what_it_takes(name, value, takes):
    from helpers.parameters import ParameterError, check_parameters

    with pytest.raises(ParameterError, match=f"^{name} = {__import__('re').escape(repr(value))}: takes "
                                             f"{__import__('re').escape(takes)}"):
        check_parameters({name: value, "unrelated": object()})


def test_a_wrong_kind_on_the_command_line_stops_before_anything_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "helpers.notebooks", "-p", "steps", "abc"], cwd=REPO,
                          capture_output=True, text=True, env={**__import__("os").environ,
                                                               "NUCLEI_WORKSPACE": str(tmp_path / "ws")})
    assert proc.returncode == 2 and "steps = 'abc': takes a whole number of 0 or more" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
