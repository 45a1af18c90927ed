"""helpers.progress: the bars shown in a notebook kernel."""
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
