"""helpers.colab and the notebooks' setup cell, on and off Colab (helpers.notebooks: tests/test_notebooks.py).

Only Colab itself is faked (``fake_colab``: a ``google.colab`` module whose ``drive.mount`` makes
MyDrive under tmp_path). pip, git, papermill and Jupyter kernels run for real.
"""
import importlib.abc
import importlib.metadata
import json
import logging
import os
import re
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

from helpers import colab, notebooks

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


@pytest.mark.skipif(int(__import__("google.protobuf").protobuf.__version__.split(".")[0]) >= 6,
                    reason="needs Colab's protobuf 5.x (the Colab-like environment)")
def test_model_garden_import_shows_no_gencode_traceback_under_colab_protobuf():
    code = "from helpers import colab; colab.quiet(); from official.vision.configs import maskrcnn"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Gencode" not in proc.stderr and "Traceback" not in proc.stderr


# --- the notebooks' setup cell -----------------------------------------------------------------

def _notebooks():
    return notebooks.workflow_notebooks()


def _setup_cell(path: Path) -> dict:
    cells = json.loads(path.read_text())["cells"]
    return next(c for c in cells if c["cell_type"] == "code" and "colab.setup(" in "".join(c["source"]))


def _parameters_cell(path: Path) -> dict:
    cells = json.loads(path.read_text())["cells"]
    return next(c for c in cells if "parameters" in c["metadata"].get("tags", []))


def test_setup_cells_are_identical_collapsed_and_need_no_url():
    books = _notebooks()
    assert len(books) == 6
    sources = {"".join(_setup_cell(b)["source"]) for b in books}
    assert len(sources) == 1
    src = sources.pop()
    assert src.startswith("# @title ") and "GITHUB_TOKEN" in src.split("import os")[0]  # the form says it
    assert '"--depth", "1"' in src and "workspace_root=workspace_root" in src
    for b in books:
        assert _setup_cell(b)["metadata"].get("cellView") == "form", b.name  # collapsed on Colab
        for cell in (_setup_cell(b), _parameters_cell(b)):
            assert cell["outputs"] == [] and cell["execution_count"] is None, b.name
        params = "".join(_parameters_cell(b)["source"])
        assert re.search(r'^REPO_URL = "[^"]*"  #@param', params, re.M) and "OWNER" not in params
        assert "workspace_root =" in params


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
    """The setup cell's fetches (not the test's own git commands), without any token header."""
    mark = "nuclei-maskrcnn.partial fetch"
    return [line[line.index(mark):] for line in log if mark in line]


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


@pytest.fixture()
def no_sessions(monkeypatch):
    """Colab's sessions API unreachable (a notebook not opened from GitHub answers like this)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("COLAB_JUPYTER_IP", "127.0.0.1")
    monkeypatch.setenv("KMP_TARGET_PORT", str(port))


def _stopped(namespace: dict) -> str:
    """The setup cell's SetupStopped message; it renders as the message alone."""
    with pytest.raises(Exception) as e:
        _run_setup_cell(namespace)
    assert type(e.value).__name__ == "SetupStopped"
    assert e.value._render_traceback_() == [f"\x1b[31mSetupStopped: {e.value}\x1b[0m"]
    return str(e.value)


def test_setup_cell_without_a_source_says_to_set_repo_url_before_git(fake_colab, content, git_log, no_sessions):
    msg = _stopped({"REPO_URL": "", "workspace_root": ""})
    assert "not opened from GitHub" in msg and "Set REPO_URL in the parameters cell" in msg
    assert git_log() == [] and list(content.iterdir()) == []
    assert fake_colab.mounts == []


def test_setup_cell_explains_a_failing_clone_and_leaves_nothing(fake_colab, content, git_log, tmp_path, no_sessions):
    url = f"file://{tmp_path}/nowhere.git"
    msg = _stopped({"REPO_URL": url, "workspace_root": ""})
    assert msg.startswith(f"Could not clone {url} (its default branch): ") and "fatal:" in msg
    assert "GITHUB_TOKEN" in msg and "REPO_URL" in msg
    assert len(_clones(git_log())) == 1 and list(content.iterdir()) == []


def test_setup_cell_clones_shallow_once(fake_colab, content, git_log, tmp_path, capsys, no_sessions):
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(REPO), str(bare)], check=True)
    ns = _run_setup_cell({"REPO_URL": f"file://{bare}", "workspace_root": ""})
    clone = content / "nuclei-maskrcnn"
    assert (clone / "helpers" / "colab.py").is_file()
    assert _clones(git_log()) == [f"nuclei-maskrcnn.partial fetch -q --depth 1 file://{bare} HEAD"]
    depth = subprocess.run(["git", "-C", str(clone), "rev-list", "--count", "HEAD"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert depth == "1"
    assert sys.path.count(str(clone)) == 1 and ns["runtime"]["colab"] is True
    assert capsys.readouterr().out.count("\n") == 1
    # running the cell again (or after a runtime restart): no clone, no path twice, no remount
    _run_setup_cell({"REPO_URL": f"file://{bare}", "workspace_root": ""})
    assert len(_clones(git_log())) == 1 and sys.path.count(str(clone)) == 1
    assert len(fake_colab.mounts) == 1


class _FakeGitHub:
    """github.com and Colab's sessions API on 127.0.0.1, over real HTTP: ``git http-backend``
    serves the bare repositories under ``root`` (``owner/name``), asking for the token as HTTP
    basic auth when one is set; ``/api/sessions`` says which notebook is open, as Colab does."""

    def __init__(self, root: Path, token: str = ""):
        import threading
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args):
                pass

        self.root, self.token, self.opened = root, token, ""
        self.server = make_server("127.0.0.1", 0, self.app, handler_class=Quiet)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def app(self, environ, start_response):
        import base64

        if environ["PATH_INFO"] == "/api/sessions":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps([{"name": "x.ipynb", "path": self.opened}]).encode()]
        basic = "Basic " + base64.b64encode(f"x-access-token:{self.token}".encode()).decode()
        if self.token and environ.get("HTTP_AUTHORIZATION") != basic:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="GitHub"')])
            return [b""]
        env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
               "REMOTE_USER": "someone", **{k: environ.get(v, "") for k, v in (
                   ("PATH_INFO", "PATH_INFO"), ("QUERY_STRING", "QUERY_STRING"),
                   ("REQUEST_METHOD", "REQUEST_METHOD"), ("CONTENT_TYPE", "CONTENT_TYPE"),
                   ("GIT_PROTOCOL", "HTTP_GIT_PROTOCOL"), ("HTTP_CONTENT_ENCODING", "HTTP_CONTENT_ENCODING"))}}
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        headers = [tuple(h.split(": ", 1)) for h in head.decode().split("\r\n") if h]
        status = next((v for k, v in headers if k.lower() == "status"), "200 OK")
        start_response(status, [(k, v) for k, v in headers if k.lower() != "status"])
        return [payload]

    def open_notebook(self, repo: str, ref: str, monkeypatch):
        """Colab opened notebooks/01 of github.com/<repo> at <ref>; git reaches github.com here."""
        url = f"https://github.com/{repo}/blob/{ref}/notebooks/01_prepare_shards.ipynb"
        self.opened = "fileId=" + __import__("urllib.parse").parse.quote(url, safe="")
        monkeypatch.setenv("COLAB_JUPYTER_IP", "127.0.0.1")
        monkeypatch.setenv("KMP_TARGET_PORT", str(self.port))
        for k, v in {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": f"url.http://127.0.0.1:{self.port}/.insteadOf",
                     "GIT_CONFIG_VALUE_0": "https://github.com/"}.items():
            monkeypatch.setenv(k, v)


@pytest.fixture()
def fork(tmp_path):
    """A fork, github.com/alice/nuclei-maskrcnn, with a branch ``my-branch`` one commit ahead."""
    bare = tmp_path / "github" / "alice" / "nuclei-maskrcnn"
    subprocess.run(["git", "clone", "-q", "--bare", str(REPO), str(bare)], check=True)
    work = tmp_path / "alice-work"
    subprocess.run(["git", "clone", "-q", str(bare), str(work)], check=True)
    (work / "ALICE.md").write_text("alice's change\n")
    for cmd in (["checkout", "-q", "-b", "my-branch"], ["add", "ALICE.md"],
                ["-c", "user.name=a", "-c", "user.email=a@b", "commit", "-q", "-m", "alice"],
                ["push", "-q", "origin", "my-branch"]):
        subprocess.run(["git", "-C", str(work), *cmd], check=True)
    return tmp_path / "github"


def test_setup_cell_clones_the_fork_and_branch_it_was_opened_from(fake_colab, content, git_log, fork, monkeypatch):
    github = _FakeGitHub(fork)
    github.open_notebook("alice/nuclei-maskrcnn", "my-branch", monkeypatch)
    _run_setup_cell({"REPO_URL": "", "workspace_root": ""})
    clone = content / "nuclei-maskrcnn"
    assert (clone / "ALICE.md").read_text() == "alice's change\n"  # the branch, not the default one
    assert _clones(git_log()) == ["nuclei-maskrcnn.partial fetch -q --depth 1 "
                                  "https://github.com/alice/nuclei-maskrcnn my-branch"]


def test_setup_cell_clones_a_private_fork_with_the_token_from_colab_secrets(fake_colab, content, git_log, fork,
                                                                          monkeypatch):
    github = _FakeGitHub(fork, token="ghp_secret123")
    github.open_notebook("alice/nuclei-maskrcnn", "my-branch", monkeypatch)
    msg = _stopped({"REPO_URL": "", "workspace_root": ""})  # no secret yet: says which one to add
    assert msg.startswith("Could not clone https://github.com/alice/nuclei-maskrcnn (my-branch): ")
    assert "named GITHUB_TOKEN" in msg and list(content.iterdir()) == []

    asked = []

    def get(key):
        asked.append(key)
        return "ghp_secret123"

    monkeypatch.setattr(sys.modules["google.colab"], "userdata", types.SimpleNamespace(get=get), raising=False)
    ns = _run_setup_cell({"REPO_URL": "", "workspace_root": ""})
    clone = content / "nuclei-maskrcnn"
    assert (clone / "ALICE.md").is_file() and asked == ["GITHUB_TOKEN"]
    assert not any("ghp_secret123" in line or "Basic " in line for line in git_log())  # not on git's command line
    assert not [name for name, value in ns.items() if value == "ghp_secret123"]  # nor left in the notebook
    stored = subprocess.run(["git", "-C", str(clone), "config", "--list", "--local"],
                            capture_output=True, text=True, check=True).stdout
    assert "ghp_secret123" not in stored and "extraheader" not in stored.lower()  # the token is not kept


def test_setup_cell_names_a_token_that_cannot_read_the_repository(fake_colab, content, fork, monkeypatch):
    github = _FakeGitHub(fork, token="ghp_right")
    github.open_notebook("alice/nuclei-maskrcnn", "my-branch", monkeypatch)
    monkeypatch.setattr(sys.modules["google.colab"], "userdata", types.SimpleNamespace(get=lambda key: "ghp_wrong"),
                        raising=False)
    msg = _stopped({"REPO_URL": "", "workspace_root": ""})
    assert "with the token GITHUB_TOKEN: " in msg and "ghp_wrong" not in msg
    assert list(content.iterdir()) == []


def test_setup_cell_off_colab_only_makes_helpers_importable(content, git_log, monkeypatch):
    monkeypatch.chdir(REPO / "notebooks")  # where papermill runs the notebooks
    ns = _run_setup_cell({"REPO_URL": PLACEHOLDER, "workspace_root": str(content / "ws")})
    assert git_log() == [] and sys.path.count(str(REPO)) >= 1
    assert ns["runtime"]["colab"] is False and not (content / "ws").exists()


# --- the end of each notebook: what to open next, and releasing the runtime ---------------------

def _last_code_cell(path: Path) -> str:
    cells = json.loads(path.read_text())["cells"]
    return "".join([c for c in cells if c["cell_type"] == "code"][-1]["source"])


def test_each_notebook_ends_naming_the_next_with_release_off_by_default():
    books = _notebooks()
    for book, following in zip(books, [*books[1:], None]):
        src = _last_code_cell(book)
        assert src.startswith('release_runtime = False  # @param {type:"boolean"}\n'), book.name
        assert src.endswith(f"colab.next_notebook({json.dumps(following.stem) if following else None}, "
                            "release_runtime)"), book.name
    first = "".join(json.loads(books[0].read_text())["cells"][0]["source"])
    assert "No GPU needed" in first and books[0].stem in colab.GPU_NOT_NEEDED


def _next(capsys, *args, **kw) -> str:
    assert colab.next_notebook(*args, **kw) is None  # nothing for a notebook to echo as the cell's result
    return capsys.readouterr().out.strip()


def test_next_notebook_off_colab_names_it_only(capsys):
    assert _next(capsys, "02_train_heads", release_runtime=True) == "Next: notebook 02_train_heads."
    assert _next(capsys, None) == "Done: this was the last notebook."


def test_colab_link_follows_the_fork_and_commit_the_project_was_cloned_from(tmp_path):
    sha, tag_object = "0123456789abcdef0123456789abcdef01234567", "f" * 40
    (tmp_path / ".git").mkdir()
    assert colab.colab_link("02_train_heads", tmp_path) == ""  # not cloned by the setup cell
    # what `git fetch <url> <annotated tag>` then `checkout FETCH_HEAD` leave: the tag object's id
    # in FETCH_HEAD, the commit in the detached HEAD
    (tmp_path / ".git" / "FETCH_HEAD").write_text(
        f"{tag_object}\t\ttag 'v1' of https://github.com/alice/nuclei-maskrcnn\n")
    (tmp_path / ".git" / "HEAD").write_text(sha + "\n")
    assert colab.colab_link("02_train_heads", tmp_path) == \
        f"https://colab.research.google.com/github/alice/nuclei-maskrcnn/blob/{sha}/notebooks/02_train_heads.ipynb"
    (tmp_path / ".git" / "FETCH_HEAD").write_text(f"{sha}\t\tfile:///somewhere/else\n")
    assert colab.opened_from(tmp_path) == ("", "")


@pytest.mark.parametrize("release", [False, True])
def test_next_notebook_on_colab_says_to_release_the_runtime_or_releases_it(fake_colab, monkeypatch, capsys, release):
    released = []
    monkeypatch.setattr(sys.modules["google.colab"], "runtime",
                        types.SimpleNamespace(unassign=lambda: released.append(True)), raising=False)
    text = _next(capsys, "02_train_heads", release_runtime=release)
    assert text.startswith("Next: notebook 02_train_heads, on a GPU runtime")
    assert ("Releasing this runtime now." in text) == release and (colab.RELEASE_HINT in text) != release
    assert released == ([True] if release else [])
    assert "a CPU runtime is enough" in _next(capsys, "01_prepare_shards")


def test_setup_cell_keeps_the_branch_when_repo_url_names_the_same_fork(fake_colab, content, fork, monkeypatch):
    """--set-repo-url writes the fork's URL into REPO_URL: the branch Colab opened still wins."""
    github = _FakeGitHub(fork)
    github.open_notebook("alice/nuclei-maskrcnn", "my-branch", monkeypatch)
    _run_setup_cell({"REPO_URL": "https://github.com/alice/nuclei-maskrcnn", "workspace_root": ""})
    assert (content / "nuclei-maskrcnn" / "ALICE.md").is_file()


def test_setup_cell_sends_the_token_to_github_only(fake_colab, content, fork, monkeypatch):
    github = _FakeGitHub(fork, token="ghp_secret123")
    github.open_notebook("alice/nuclei-maskrcnn", "my-branch", monkeypatch)
    asked = []
    monkeypatch.setattr(sys.modules["google.colab"], "userdata",
                        types.SimpleNamespace(get=lambda key: asked.append(key) or "ghp_secret123"), raising=False)
    elsewhere = f"http://127.0.0.1:{github.port}/alice/nuclei-maskrcnn"  # not github.com, not https
    msg = _stopped({"REPO_URL": elsewhere, "workspace_root": ""})
    assert msg.startswith(f"Could not clone {elsewhere} (its default branch): ") and asked == []


def test_setup_cell_names_a_folder_in_the_way(fake_colab, content, no_sessions):
    (content / "nuclei-maskrcnn").mkdir()
    (content / "nuclei-maskrcnn" / "mine.txt").write_text("the user's")
    msg = _stopped({"REPO_URL": "https://github.com/alice/nuclei-maskrcnn", "workspace_root": ""})
    assert "nuclei-maskrcnn exists but holds no helpers/ folder" in msg
    assert (content / "nuclei-maskrcnn" / "mine.txt").read_text() == "the user's"
