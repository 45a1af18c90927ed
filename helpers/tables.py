"""Result tables: text anywhere, a rendered table in a notebook.

A :class:`Report` is a list of parts, lines of text and :class:`Table` s (dict rows). ``str()``
gives plain text (aligned columns: logs, tests, a terminal); in Jupyter or Colab each table
renders as a pandas DataFrame (HTML) where pandas imports, and as the same text where it does
not. :func:`show` displays a report in a notebook and prints it elsewhere.

Numbers are formatted per column: percentages (a column whose name starts with ``%``) with one
decimal, other floats with four.
"""
from __future__ import annotations

import html
import importlib.util
from dataclasses import dataclass, field
from typing import Mapping, Sequence


def _cell(column: str, value, formats: Mapping[str, str]) -> str:
    if column in formats and value is not None:
        return formats[column].format(value)
    if isinstance(value, float):
        return f"{value:.1f}" if column.startswith("%") else f"{value:.4f}"
    return "" if value is None else str(value)


@dataclass
class Table:
    rows: Sequence[Mapping]
    title: str = ""
    formats: Mapping[str, str] = field(default_factory=dict)  # column -> "{:.2f}"-style format

    @property
    def columns(self) -> list[str]:
        return list(self.rows[0].keys()) if self.rows else []

    def cells(self) -> list[list[str]]:
        return [[_cell(c, r.get(c), self.formats) for c in self.columns] for r in self.rows]

    def text(self) -> str:
        """Aligned plain text: numbers right-aligned, words left-aligned."""
        if not self.rows:
            return f"{self.title}\n(no rows)" if self.title else "(no rows)"
        cols, cells = self.columns, self.cells()
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        numeric = [all(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) for r in self.rows)
                   for c in cols]

        def line(values):
            return "  ".join(v.rjust(w) if num else v.ljust(w)
                             for v, w, num in zip(values, widths, numeric)).rstrip()
        out = [self.title] if self.title else []
        out += [line(cols), "  ".join("-" * w for w in widths), *(line(row) for row in cells)]
        return "\n".join(out)

    def frame(self):
        """The table as a pandas DataFrame of the formatted cells (pandas must import)."""
        import pandas as pd

        return pd.DataFrame(self.cells(), columns=self.columns)


def format_table(rows: Sequence[Mapping]) -> str:
    """A plain-text table of dict rows (the keys of the first row are the columns)."""
    return Table(rows).text()


@dataclass
class Report:
    parts: list = field(default_factory=list)  # str lines and Tables, in order

    def __str__(self) -> str:
        return "\n".join(p.text() if isinstance(p, Table) else p for p in self.parts)

    def _repr_pretty_(self, printer, cycle) -> None:  # IPython's text view
        printer.text(str(self))

    def _repr_html_(self) -> str | None:
        """Jupyter's view: the tables as DataFrames, the text around them as it is (None, so
        that Jupyter shows the text, where pandas does not import)."""
        if importlib.util.find_spec("pandas") is None:
            return None
        out = []
        for p in self.parts:
            if isinstance(p, Table):
                title = f"<b>{html.escape(p.title)}</b>" if p.title else ""
                out.append(title + (p.frame().to_html(index=False) if p.rows else "<p>(no rows)</p>"))
            elif p:
                out.append(f"<pre style='margin:0.4em 0'>{html.escape(p)}</pre>")
        return "\n".join(out)


def show(report: Report) -> None:
    """Display ``report`` in a notebook (its tables rendered), print it elsewhere."""
    try:
        from IPython import get_ipython

        if get_ipython() is not None:
            from IPython.display import display

            display(report)
            return
    except ImportError:
        pass
    print(report)


__all__ = ["Table", "Report", "format_table", "show"]
