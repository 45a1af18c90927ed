"""Errors a user can fix show in a notebook as their message, not a traceback (helpers/errors.py).

Each error here is raised by the helper a notebook calls, on the input that causes it, inside a real
IPython shell (in-process) and a real Jupyter kernel (papermill); nothing is mocked but Colab's
Drive consent (``fake_colab``).
"""
import json
import re
from pathlib import Path

import papermill
import pytest
from IPython.core.interactiveshell import InteractiveShell

from helpers import errors

REPO = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TRACEBACK_MARKS = ("Traceback", "File \"", "---->", "Cell In[", "<module>")
pytestmark = pytest.mark.colab


@pytest.fixture()
def shell():
    sh = InteractiveShell.instance()
    sh.user_ns["REPO"] = str(REPO)
    yield sh
    sh.user_ns.clear()


def _cell_output(shell, capsys, code: str) -> str:
    capsys.readouterr()
    result = shell.run_cell(code)
    assert not result.success, "the cell was meant to fail"
    out = capsys.readouterr()
    return ANSI.sub("", out.out + out.err)


def _shows_message_only(text: str, name: str, *phrases: str) -> None:
    assert text.strip().startswith(f"{name}: "), text
    for phrase in phrases:
        assert phrase in text, (phrase, text)
    for mark in TRACEBACK_MARKS:
        assert mark not in text, (mark, text)


def test_a_dataset_without_images_is_one_message(shell, capsys, tmp_path):
    (tmp_path / "mine").mkdir()
    text = _cell_output(shell, capsys, f"from helpers.data.dataset import open_dataset\n"
                                       f"open_dataset({str(tmp_path / 'mine')!r})")
    _shows_message_only(text, "DatasetError", str(tmp_path / "mine"))


def test_a_wrong_parameter_is_one_message(shell, capsys):
    text = _cell_output(shell, capsys, "from helpers.parameters import check_parameters\n"
                                       "steps = 'abc'\ncheck_parameters(globals())")
    _shows_message_only(text, "ParameterError", "steps = 'abc'", "parameters cell")


def test_a_refused_drive_consent_is_one_message(shell, capsys, fake_colab, tmp_path):
    fake_colab.error = RuntimeError("credential propagation was unsuccessful")
    from helpers import colab

    root = colab.DRIVE_MOUNTPOINT / "MyDrive" / "nuclei_workspace"
    text = _cell_output(shell, capsys, f"from helpers import colab\ncolab.ensure_drive({str(root)!r})")
    _shows_message_only(text, "SetupError", "credential propagation was unsuccessful",
                        "allow access to Google Drive")


def test_a_workspace_path_with_brackets_is_one_message(shell, capsys, tmp_path):
    text = _cell_output(shell, capsys, f"from helpers.workspace import get_workspace\n"
                                       f"get_workspace({str(tmp_path / 'ws [1]')!r})")
    _shows_message_only(text, "WorkspaceError", "ws [1]")


def test_an_unknown_augmentation_is_one_message(shell, capsys):
    text = _cell_output(shell, capsys, "from helpers.infer import tta\nimport numpy as np\n"
                                       "tta.augment_image(np.zeros((4, 4, 3), np.uint8), 'hflipp')")
    _shows_message_only(text, "InvalidRequest", "'hflipp'", "hflip")


def test_a_library_error_keeps_its_traceback(shell, capsys):
    text = _cell_output(shell, capsys, "import numpy as np\nnp.zeros(-1)")
    assert "ValueError" in text and any(mark in text for mark in TRACEBACK_MARKS), text


def test_a_bug_of_ours_keeps_its_traceback(shell, capsys):
    """Only the user-error classes drop the traceback: a plain ValueError from a helper keeps it."""
    text = _cell_output(shell, capsys, "from helpers.detections import Detections\n"
                                       "Detections.concat([])")
    assert "ValueError" in text and any(mark in text for mark in TRACEBACK_MARKS), text


def test_every_error_class_of_ours_that_a_user_can_cause_is_a_user_error():
    """The error classes defined in helpers/ are UserErrors, except the internal ones named here."""
    import importlib
    import pkgutil

    import helpers

    internal = {"CopyAbandoned", "_CannotSnapshot", "RLEError", "MisfitFile", "DamagedDownload"}
    found = {}
    for mod in pkgutil.walk_packages(helpers.__path__, "helpers."):
        module = importlib.import_module(mod.name)
        for name, obj in vars(module).items():
            if isinstance(obj, type) and issubclass(obj, Exception) \
                    and not issubclass(obj, Warning) and obj.__module__ == mod.name:
                found[name] = obj
    assert len(found) > 30
    plain = sorted(n for n, cls in found.items() if not issubclass(cls, errors.UserError) and n not in internal)
    assert plain == []


def test_in_a_kernel_the_error_output_is_the_message(tmp_path):
    """Through a real Jupyter kernel (papermill): the notebook's error output holds the message
    alone, and the run still stops at that cell."""
    nb = {"cells": [{"cell_type": "code", "id": f"cell{k}", "metadata": {}, "execution_count": None, "outputs": [],
                     "source": src}
                    for k, src in enumerate((f"import sys; sys.path.insert(0, {str(REPO)!r})",
                                f"from helpers.data.dataset import open_dataset\n"
                                f"open_dataset({str(tmp_path / 'nothing')!r})",
                                "print('not reached')"))],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "in.ipynb").write_text(json.dumps(nb))
    with pytest.raises(papermill.PapermillExecutionError) as e:
        papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"),
                                   kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    assert e.value.ename == "DatasetError"
    cells = json.loads((tmp_path / "out.ipynb").read_text())["cells"]
    error = [o for o in cells[-2]["outputs"] if o["output_type"] == "error"]
    assert len(error) == 1
    text = ANSI.sub("", "\n".join(error[0]["traceback"]))
    _shows_message_only(text, "DatasetError", "nothing")
    assert cells[-1]["outputs"] == []
