"""helpers.colab and the notebooks' setup cell, on and off Colab.

Only Colab itself is faked (``fake_colab``: a ``google.colab`` module whose ``drive.mount`` makes
MyDrive under tmp_path). pip, git, papermill and Jupyter kernels run for real.
"""
import importlib.abc
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import colab, notebooks
from test_workspace import fake_colab  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parents[1]
PLACEHOLDER = "https://github.com/OWNER/nuclei-maskrcnn"
# tf-models-official's releases on PyPI (2.20.0 is the newest; there is no 2.19.0)
RELEASES = ["2.20.0", "2.19.1", "2.18.0", "2.17.0", "2.16.0", "2.15.0", "2.14.2", "2.14.1"]
TF = importlib.metadata.version("tensorflow")
MODEL_GARDEN = importlib.metadata.version("tf-models-official")
# these depend on the installed versions: the Colab-like env runs them (`-m colab`)
pytestmark = pytest.mark.colab


@pytest.fixture(autouse=True)
def _restore_logging_and_env(monkeypatch):
    """setup()/quiet() set TF_CPP_MIN_LOG_LEVEL, absl's verbosity and a filter: undo them."""
    from absl import logging as absl_logging

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    verbosity = absl_logging.get_verbosity()
    filters = list(logging.getLogger("absl").filters)
    yield
    absl_logging.set_verbosity(verbosity)
    logging.getLogger("absl").filters[:] = filters


class _Block(importlib.abc.MetaPathFinder):
    """Makes modules unimportable, like on a runtime that lacks them."""

    def __init__(self, *names, unless=None):
        self.names, self.unless = names, unless

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.split(".")[0]
        if top in self.names and not (self.unless and self.unless()):
            raise ModuleNotFoundError(f"No module named {top!r}", name=top)
        return None


def _hide(monkeypatch, *names, unless=None):
    for mod in [m for m in sys.modules if m.split(".")[0] in names]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(sys, "meta_path", [_Block(*names, unless=unless), *sys.meta_path])


@pytest.fixture()
def subprocess_calls(monkeypatch):
    """Every subprocess.run call (they still run)."""
    calls, real = [], subprocess.run

    def spy(cmd, *args, **kwargs):
        calls.append(list(cmd))
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    return calls


# --- off Colab --------------------------------------------------------------------------------

def test_setup_off_colab_is_a_local_no_op(tmp_path, monkeypatch, capsys, subprocess_calls):
    assert "google.colab" not in sys.modules and not colab.in_colab()
    monkeypatch.setenv("NUCLEI_WORKSPACE", str(tmp_path / "ws"))
    info = colab.setup()
    assert info["colab"] is False and "drive" not in info and "installed" not in info
    assert info["workspace"] == str(tmp_path / "ws") and not (tmp_path / "ws").exists()
    assert subprocess_calls == []
    out = capsys.readouterr()
    assert out.out.strip() == colab.status_line(info) and "\n" not in out.out.strip()
    assert out.out.startswith("Local runtime (not Colab) · TensorFlow ") and out.err == ""


def test_setup_quiets_tensorflow_before_it_is_imported(monkeypatch, capsys):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    monkeypatch.setattr(colab, "has_gpu", lambda: True)
    colab.setup()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"  # GPU: CUDA's errors are real ones
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL")
    monkeypatch.setattr(colab, "has_gpu", lambda: False)
    colab.setup()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"  # no GPU: "failed call to cuInit" is noise
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # the user's own choice is kept
    colab.setup()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


# --- on Colab (fake google.colab) -------------------------------------------------------------

def test_setup_on_colab_mounts_drive_for_the_drive_workspace(fake_colab, tmp_path, capsys,
                                                             subprocess_calls):
    info = colab.setup()
    drive = tmp_path / "content" / "drive"
    assert fake_colab.mounts == [str(drive)]
    assert info["workspace"] == str(drive / "MyDrive" / "nuclei_workspace")
    out = capsys.readouterr()
    assert out.err == "" and out.out.count("\n") == 1  # one status line, nothing else
    line = out.out.strip()
    assert line.startswith("Colab ") and f"TensorFlow {info['tensorflow']}" in line
    assert f"Model Garden {MODEL_GARDEN} (already installed)" in line  # official is importable here
    assert line.endswith(f"workspace {drive / 'MyDrive' / 'nuclei_workspace'}")
    assert subprocess_calls == []


def test_setup_on_colab_with_a_local_workspace_does_not_mount(fake_colab, tmp_path, capsys):
    info = colab.setup(workspace_root=str(tmp_path / "content" / "nuclei_workspace"))
    assert fake_colab.mounts == [] and "drive" not in info
    assert capsys.readouterr().out.strip().endswith(f"workspace {tmp_path}/content/nuclei_workspace")


def test_setup_on_colab_mounts_for_a_workspace_root_on_drive(fake_colab, tmp_path):
    colab.setup(workspace_root=tmp_path / "content" / "drive" / "MyDrive" / "mine")
    assert fake_colab.mounts == [str(tmp_path / "content" / "drive")]


class MessageError(Exception):  # what google.colab raises when the consent is declined
    pass


@pytest.mark.parametrize("error", [MessageError("credential propagation was unsuccessful"),
                                   ValueError("mount failed")])
def test_declined_or_timed_out_mount_says_what_to_do(fake_colab, error):
    fake_colab.error = error
    with pytest.raises(colab.SetupError) as e:
        colab.setup()
    msg = str(e.value)
    assert str(error) in msg and "allow access" in msg
    assert "workspace_root" in msg and "/content/nuclei_workspace" in msg and "lost" in msg
    assert e.value.__suppress_context__  # no "During handling of the above exception" chain
    assert fake_colab.mounts  # it did try


def test_runtime_without_tensorflow_says_change_runtime_type(fake_colab, monkeypatch,
                                                             subprocess_calls):
    _hide(monkeypatch, "tensorflow")
    with pytest.raises(ModuleNotFoundError):
        import tensorflow  # noqa: F401  (the simulated TPU runtime really has none)
    with pytest.raises(colab.SetupError, match="Change runtime type") as e:
        colab.setup()
    assert not isinstance(e.value, ImportError) and "GPU" in str(e.value)
    assert fake_colab.mounts == [] and subprocess_calls == []  # stops before anything else
    with pytest.raises(colab.SetupError, match="T4"):
        colab.install_model_garden()  # the CLI's install step says so too


# --- the install step ---------------------------------------------------------------------------

def _after_no_deps(cmd):
    return cmd[cmd.index("--no-deps") + 1:]


@pytest.mark.parametrize("tf, spec, note", [
    ("2.20.0", "tf-models-official<2.21", ""),
    ("2.21.0", "tf-models-official<2.22", "no Model Garden 2.21 release yet: 2.20.0 is the newest"),
    ("2.19.1", "tf-models-official<2.20", ""),
    ("2.19.0", "tf-models-official<2.20", ""),  # 2.19.1 (no 2.19.0 release): same major.minor
])
def test_install_plan_falls_back_to_the_newest_release_not_newer_than_tensorflow(tf, spec, note):
    cmd, got = colab.install_plan(tf, RELEASES + ["2.22.0rc0"], tf_keras_version=tf)
    assert cmd[:5] == [sys.executable, "-m", "pip", "install", "-q"]
    assert _after_no_deps(cmd) == [spec]  # nothing but Model Garden, and without its dependencies
    assert got.startswith(note) and (got == "") == (note == "")
    if note:
        assert f"TensorFlow {tf}" in got and "\n" not in got


def test_install_plan_keeps_colab_packages():
    cmd, _ = colab.install_plan("2.21.0", missing=("gdown",))  # no tf-keras at all
    packages = _after_no_deps(cmd)
    assert packages == ["tf-models-official<2.22", "tf-keras<2.22", "gdown"]
    assert not any(p.split("<")[0].split("=")[0] in ("tensorflow", "numpy", "protobuf", "keras")
                   for p in packages)
    # a matching tf-keras (Colab's) is not reinstalled; a mismatched one is
    assert "tf-keras<2.21" not in colab.install_plan("2.20.0", tf_keras_version="2.20.1")[0]
    assert "tf-keras<2.21" in colab.install_plan("2.20.0", tf_keras_version="2.19.0")[0]
    with pytest.raises(colab.SetupError, match="no tf-models-official release fits"):
        colab.install_plan("2.13.0", RELEASES)


def test_version_note():
    assert colab.version_note("2.20.0", "2.20.0") == ""
    assert colab.version_note("2.19.0", "2.19.1") == ""
    assert colab.version_note("2.21.0", "2.20.0").startswith("no Model Garden 2.21 release yet")


def test_pip_output_is_shown_only_when_pip_fails(capfd):
    noisy = [sys.executable, "-c", "import sys; print('Collecting x'); "
             "print(\"ERROR: pip's dependency resolver does not currently take into account\", "
             "file=sys.stderr)"]
    colab.run_quiet(noisy)
    assert capfd.readouterr() == ("", "")
    failing = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "-q",
               "nuclei-no-such-package-x"]
    with pytest.raises(colab.SetupError) as e:
        colab.run_quiet(failing)
    assert "pip install failed" in str(e.value) and "nuclei-no-such-package-x" in str(e.value)
    assert "No matching distribution" in str(e.value) or "Could not find" in str(e.value)
    assert capfd.readouterr() == ("", "")  # only in the error, never printed on the way


def _fake_model_garden_wheel(folder: Path) -> Path:
    """A stand-in tf-models-official 2.20.0 wheel, so pip really installs it (offline)."""
    folder.mkdir(parents=True)
    wheel = folder / "tf_models_official-2.20.0-py3-none-any.whl"
    info = "tf_models_official-2.20.0.dist-info"
    files = {"official/__init__.py": "",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: tf-models-official\nVersion: 2.20.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr(f"{info}/RECORD", "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n")
    return wheel


def test_install_once_then_a_rerun_installs_nothing(fake_colab, tmp_path, monkeypatch, capsys,
                                                     subprocess_calls):
    # a fresh Colab runtime: no Model Garden until pip has put it in place
    target = tmp_path / "site"
    _hide(monkeypatch, "official", unless=lambda: (target / "official").is_dir())
    wheels = _fake_model_garden_wheel(tmp_path / "wheels").parent
    for k, v in {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "PIP_TARGET": str(target),
                 "PIP_DISABLE_PIP_VERSION_CHECK": "1"}.items():
        monkeypatch.setenv(k, v)
    info = colab.setup()
    assert [c[:4] for c in subprocess_calls] == [[sys.executable, "-m", "pip", "install"]]
    major, minor = TF.split(".")[:2]
    assert [a for a in subprocess_calls[0] if a.startswith("tf-models-official")] == \
        [f"tf-models-official<{major}.{int(minor) + 1}"]
    assert (target / "official" / "__init__.py").is_file() and info["installed"] is True
    first = capsys.readouterr()
    assert first.err == "" and first.out.count("\n") == 1 and "Model Garden 2.20.0 installed" in first.out
    # re-running the setup cell (or after a runtime restart): no pip, no second mount
    info = colab.setup()
    assert len(subprocess_calls) == 1 and info["installed"] is False
    assert len(fake_colab.mounts) == 1
    assert "(already installed)" in capsys.readouterr().out


def test_install_cli_prints_the_status_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    proc = subprocess.run([sys.executable, "-m", "helpers.colab", "install"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout.count("\n") == 1
    assert f"TensorFlow {TF} · Model Garden {MODEL_GARDEN} (already installed)" in proc.stdout


# --- quiet -----------------------------------------------------------------------------------

def test_quiet_drops_only_the_protobuf_gencode_record(caplog):
    from absl import logging as absl_logging
    from google.protobuf import runtime_version

    colab.quiet()
    colab.quiet()  # idempotent: one filter
    assert sum(isinstance(f, colab._ProtobufGencodeFilter) for f in logging.getLogger("absl").filters) == 1
    assert absl_logging.get_verbosity() == absl_logging.ERROR
    msg = (f"{colab.PROTOBUF_GENCODE_MESSAGE} when loading tensorflow_metadata/proto/v0/schema.proto:"
           " gencode 6.31.1 runtime 5.29.6. Runtime version cannot be older than the linked gencode")
    with caplog.at_level(logging.ERROR):
        try:  # what tensorflow_datasets/__init__.py does with it
            raise runtime_version.VersionError(msg)
        except Exception as e:
            absl_logging.exception(e)
        try:
            raise RuntimeError("a real problem")
        except Exception as e:
            absl_logging.exception(e)
        absl_logging.warning("below the verbosity")
    assert [r.getMessage() for r in caplog.records] == ["a real problem"]


def test_gencode_message_is_protobufs_own():
    import inspect

    from google.protobuf import runtime_version

    assert colab.PROTOBUF_GENCODE_MESSAGE in inspect.getsource(runtime_version)


@pytest.mark.skipif(int(__import__("google.protobuf").protobuf.__version__.split(".")[0]) >= 6,
                    reason="needs Colab's protobuf 5.x (the Colab-like environment)")
def test_model_garden_import_shows_no_gencode_traceback_under_colab_protobuf():
    code = "from helpers import colab; colab.quiet(); from official.vision.configs import maskrcnn"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Gencode" not in proc.stderr and "Traceback" not in proc.stderr


def test_progress_bars_do_not_warn_in_a_kernel(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.delenv("NUCLEI_TEXT_PROGRESS", raising=False)
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from helpers.progress import tqdm\nfor _ in tqdm(range(3)): pass"),
        nbformat.v4.new_code_cell("import importlib.util\nprint(importlib.util.find_spec('ipywidgets') is None)"),
        nbformat.v4.new_code_cell("from tqdm.auto import tqdm as auto_tqdm"),
    ])
    NotebookClient(nb, kernel_name="python3", resources={"metadata": {"path": str(REPO)}},
                   timeout=120).execute()
    text = ["".join(o.get("text", "")) for c in nb.cells for o in c.outputs]
    own, no_widgets, control = (["".join(o.get("text", "")) for o in c.outputs] for c in nb.cells)
    assert not any("IProgress" in t or "TqdmWarning" in t for t in own)
    if no_widgets == ["True\n"]:  # text bars; and the plain tqdm.auto does warn here
        assert any("3/3" in t for t in own)
        assert any("IProgress not found" in t for t in control), text


# --- the notebooks' setup cell -----------------------------------------------------------------

def _notebooks():
    return notebooks.workflow_notebooks()


def _setup_cell(path: Path) -> dict:
    cells = json.loads(path.read_text())["cells"]
    return next(c for c in cells if c["cell_type"] == "code" and "colab.setup(" in "".join(c["source"]))


def _parameters_cell(path: Path) -> dict:
    cells = json.loads(path.read_text())["cells"]
    return next(c for c in cells if "parameters" in c["metadata"].get("tags", []))


def test_setup_cells_are_identical_without_outputs_and_check_the_url_first():
    books = _notebooks()
    assert len(books) == 6
    sources = {"".join(_setup_cell(b)["source"]) for b in books}
    assert len(sources) == 1
    src = sources.pop()
    assert src.index('"OWNER" in REPO_URL') < src.index('"git", "clone"')
    assert '"--depth", "1"' in src
    for b in books:
        for cell in (_setup_cell(b), _parameters_cell(b)):
            assert cell["outputs"] == [] and cell["execution_count"] is None, b.name
        params = "".join(_parameters_cell(b)["source"])
        assert "REPO_URL =" in params and "workspace_root =" in params
        assert "workspace_root=workspace_root" in src


@pytest.fixture()
def git_log(tmp_path, monkeypatch):
    """A `git` first on PATH that logs its arguments, then runs the real git."""
    real = subprocess.run(["which", "git"], capture_output=True, text=True, check=True).stdout.strip()
    bindir, log = tmp_path / "bin", tmp_path / "git.log"
    bindir.mkdir()
    (bindir / "git").write_text(f'#!/bin/sh\necho "$*" >> "{log}"\nexec "{real}" "$@"\n')
    (bindir / "git").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return lambda: log.read_text().splitlines() if log.exists() else []


def _clones(log: list[str]) -> list[str]:
    """The setup cell's clones (not the test's own `git clone --bare`)."""
    return [line for line in log if line.startswith("clone") and line.endswith(" nuclei-maskrcnn")]


def _run_setup_cell(namespace: dict):
    exec(compile("".join(_setup_cell(_notebooks()[0])["source"]), "<setup cell>", "exec"), namespace)
    return namespace


@pytest.fixture()
def content(tmp_path, monkeypatch):
    """Colab's working directory /content, here empty, with sys.path restored afterwards."""
    cwd = tmp_path / "content"
    cwd.mkdir(exist_ok=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return cwd


@pytest.mark.parametrize("url", [PLACEHOLDER, ""])
def test_setup_cell_stops_on_a_placeholder_repo_url_before_git(fake_colab, content, git_log, url):
    with pytest.raises(RuntimeError, match="Set REPO_URL in the parameters cell"):
        _run_setup_cell({"REPO_URL": url, "workspace_root": ""})
    assert git_log() == [] and list(content.iterdir()) == []
    assert fake_colab.mounts == []


def test_setup_cell_explains_a_failing_clone(fake_colab, content, git_log, tmp_path):
    url = f"file://{tmp_path}/nowhere.git"
    with pytest.raises(RuntimeError) as e:
        _run_setup_cell({"REPO_URL": url, "workspace_root": ""})
    msg = str(e.value)
    assert msg.startswith(f"git clone {url} failed: ") and "fatal:" in msg and "REPO_URL" in msg
    assert len(_clones(git_log())) == 1 and not (content / "nuclei-maskrcnn").exists()


def test_setup_cell_clones_shallow_once(fake_colab, content, git_log, tmp_path, capsys):
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(REPO), str(bare)], check=True)
    ns = _run_setup_cell({"REPO_URL": f"file://{bare}", "workspace_root": ""})
    clone = content / "nuclei-maskrcnn"
    assert (clone / "helpers" / "colab.py").is_file()
    assert _clones(git_log()) == [f"clone --depth 1 -q file://{bare} nuclei-maskrcnn"]
    depth = subprocess.run(["git", "-C", str(clone), "rev-list", "--count", "HEAD"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert depth == "1"
    assert sys.path.count(str(clone)) == 1 and ns["runtime"]["colab"] is True
    assert capsys.readouterr().out.count("\n") == 1
    # running the cell again (or after a runtime restart): no clone, no path twice, no remount
    _run_setup_cell({"REPO_URL": f"file://{bare}", "workspace_root": ""})
    assert len(_clones(git_log())) == 1 and sys.path.count(str(clone)) == 1
    assert len(fake_colab.mounts) == 1


def test_setup_cell_off_colab_only_makes_helpers_importable(content, git_log, monkeypatch):
    monkeypatch.chdir(REPO / "notebooks")  # where papermill runs the notebooks
    ns = _run_setup_cell({"REPO_URL": PLACEHOLDER, "workspace_root": str(content / "ws")})
    assert git_log() == [] and sys.path.count(str(REPO)) >= 1
    assert ns["runtime"]["colab"] is False and not (content / "ws").exists()


# --- headless runs: each notebook gets only its own parameters ---------------------------------

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


def test_native_log_lines_stay_out_of_the_notebook_and_the_console(tmp_path, capfd):
    """TensorFlow's C++ logs write straight to file descriptor 2 (TF_CPP_MIN_LOG_LEVEL misses some)."""
    import nbformat

    line = "W0000 00:00:1795674489.435274   13711 op_level_cost_estimator.cc:699] Error in PredictCost()"
    cells = [nbformat.v4.new_code_cell("workspace_root = None"),
             nbformat.v4.new_code_cell(f"import os, sys\nos.write(2, b'{line}\\n')\n"
                                       "print('result'); print('python warning', file=sys.stderr)")]
    cells[0].metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(tmp_path / "native.ipynb"))
    out = notebooks.run_notebook(tmp_path / "native.ipynb", workspace_root=tmp_path / "ws")
    outputs = json.loads(out.read_text())["cells"][-1]["outputs"]
    texts = {o["name"]: "".join(o["text"]) for o in outputs}
    assert texts == {"stdout": "result\n", "stderr": "python warning\n"}  # Python's own output stays
    assert line not in capfd.readouterr().err
    assert line in (tmp_path / "ws" / "runs" / "native.kernel.log").read_text()



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
