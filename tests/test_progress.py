"""helpers.progress: the bars shown in a notebook kernel."""
import io
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the widgets and tqdm of the installed versions: the Colab-like env runs it (`-m colab`)
pytestmark = pytest.mark.colab


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


@pytest.fixture
def no_choice(monkeypatch):
    """No choice made, neither in this process nor by its environment; restored afterwards."""
    from helpers import progress

    monkeypatch.delenv(progress.TEXT_ENV, raising=False)
    monkeypatch.setattr(progress, "_text_bars", None)
    return progress


def test_the_bar_is_chosen_when_it_is_made_not_at_import(no_choice, monkeypatch):
    import tqdm.auto
    import tqdm.std

    from helpers.progress import tqdm as bar  # bound before any of the choices below
    progress = no_choice

    monkeypatch.setattr(progress, "_widgets_import", lambda: True)  # as on Colab
    assert isinstance(bar(range(1), disable=True), tqdm.auto.tqdm) and not progress.text_bars()
    progress.use_text_bars(True)  # after the import: takes effect for the next bar
    assert type(bar(range(1), disable=True)) is tqdm.std.tqdm and progress.bar_class() is tqdm.std.tqdm
    progress.use_text_bars(False)
    assert progress.bar_class() is tqdm.auto.tqdm
    monkeypatch.setenv(progress.TEXT_ENV, "1")  # the explicit choice wins over the environment
    assert progress.bar_class() is tqdm.auto.tqdm
    progress.use_text_bars(None)  # no choice: the environment (a headless kernel's) decides
    assert progress.bar_class() is tqdm.std.tqdm
    monkeypatch.setenv(progress.TEXT_ENV, "0")
    assert progress.bar_class() is tqdm.auto.tqdm
    monkeypatch.setattr(progress, "_widgets_import", lambda: False)  # no ipywidgets: text, no warning
    assert progress.bar_class() is tqdm.std.tqdm
    out = io.StringIO()
    with bar(total=2, file=out) as b:  # tqdm's own use: a context manager, update
        b.update(2)
    assert "2/2" in out.getvalue()
