"""The progress bar the helpers use: ``from helpers.progress import tqdm``, called with tqdm's own
arguments (``tqdm(iterable, desc=..., ...)``, ``with tqdm(total=...) as bar``).

Which bar is chosen each time one is made (:func:`bar_class`), not when this module is imported:

1. text bars (``tqdm.std``) after ``use_text_bars(True)``, widget bars where usable after
   ``use_text_bars(False)``: this process's explicit choice;
2. else text bars when the environment variable ``NUCLEI_TEXT_PROGRESS`` is set (not "0"): how a
   process learns the choice from the one that started it. ``helpers.notebooks`` sets it for the
   headless kernels it starts, so that the executed notebooks keep their progress lines;
3. else widget bars (``tqdm.auto``) when ipywidgets imports (Colab has it), otherwise text bars:
   ``tqdm.auto`` in a kernel without ipywidgets warns ("TqdmWarning: IProgress not found...")
   and falls back to text anyway.
"""
from __future__ import annotations

import functools
import importlib
import os

TEXT_ENV = "NUCLEI_TEXT_PROGRESS"

_text_bars: bool | None = None  # use_text_bars' choice; None: none made in this process


def use_text_bars(text: bool | None = True) -> None:
    """From now on, in this process: text bars (True), widget bars where ipywidgets imports
    (False), or back to the default (None: ``NUCLEI_TEXT_PROGRESS``, then ipywidgets).
    Bars already made keep their kind; processes started later learn it only from the
    environment variable."""
    global _text_bars
    _text_bars = None if text is None else bool(text)


def text_bars() -> bool:
    """Whether a bar made now is a text bar (module doc: the explicit choice, the environment
    variable, whether ipywidgets imports)."""
    if _text_bars is not None:
        return _text_bars
    if os.environ.get(TEXT_ENV, "") not in ("", "0"):
        return True
    return not _widgets_import()


@functools.cache
def _widgets_import() -> bool:
    """Whether ipywidgets imports (once per process: it is installed before a kernel starts)."""
    try:
        importlib.import_module("ipywidgets")
    except Exception:  # absent, or broken against this IPython
        return False
    return True


def bar_class() -> type:
    """The tqdm class a bar made now is: ``tqdm.std.tqdm`` (text) or ``tqdm.auto.tqdm`` (widgets in
    a notebook kernel, text elsewhere). For its class methods, e.g. ``bar_class().write(line)``."""
    if text_bars():
        from tqdm.std import tqdm as cls
    else:
        from tqdm.auto import tqdm as cls
    return cls


def tqdm(*args, **kwargs):
    """A progress bar of the kind chosen now (:func:`bar_class`); tqdm's own arguments."""
    return bar_class()(*args, **kwargs)


__all__ = ["tqdm", "bar_class", "text_bars", "use_text_bars", "TEXT_ENV"]
