"""The progress bar the helpers use: ``from helpers.progress import tqdm``.

``tqdm.auto`` gives widget bars in a notebook, but in a kernel without ipywidgets it warns
("TqdmWarning: IProgress not found...") and falls back to text anyway. So: ``tqdm.auto`` only
when ipywidgets imports (Colab has it), else text bars (``tqdm.std``), which are also what
headless runs get (``NUCLEI_TEXT_PROGRESS=1``, set by ``helpers.notebooks``) so that the
executed notebooks keep their progress lines.
"""
from __future__ import annotations

import os

TEXT_ENV = "NUCLEI_TEXT_PROGRESS"


def _widgets_usable() -> bool:
    if os.environ.get(TEXT_ENV, "") not in ("", "0"):
        return False
    try:
        import ipywidgets  # noqa: F401
    except Exception:  # absent, or broken against this IPython
        return False
    return True


if _widgets_usable():
    from tqdm.auto import tqdm
else:
    from tqdm.std import tqdm

__all__ = ["tqdm"]
