"""Result tables: aligned text anywhere, DataFrames in a notebook (helpers/tables.py)."""
import importlib.util

import pytest

from helpers import tables
from helpers.tables import Report, Table

ROWS = [{"recipe": "none", "AP50@100": 0.2512345, "% of ceiling AP50@100": 99.88, "n": 12},
        {"recipe": "agreement", "AP50@100": 0.26, "% of ceiling AP50@100": 100.0, "n": 7}]


def test_text_aligns_headers_with_their_columns_and_formats_percentages_with_one_decimal():
    text = Table(ROWS).text().splitlines()
    header, rule, first, second = text
    assert "99.9" in first and "99.8800" not in first and "0.2512" in first
    # every column starts (words) or ends (numbers) under its header
    for column in ROWS[0]:
        start = header.index(column)
        end = start + len(column)
        dash = rule[start:end]
        assert set(dash) == {"-"}, column
    assert first.index("0.2512") + len("0.2512") == header.index("AP50@100") + len("AP50@100")
    assert second.startswith("agreement") and first.startswith("none ")


def test_a_column_format_wins():
    assert "1.50" in Table([{"MB": 1.5}], formats={"MB": "{:.2f}"}).text().splitlines()[-1]


@pytest.mark.skipif(importlib.util.find_spec("pandas") is None, reason="pandas renders the notebook view")
def test_in_a_notebook_tables_render_as_dataframes_with_the_text_around_them():
    report = Report(["ranked by AP50@100", Table(ROWS, "recipes")])
    html = report._repr_html_()
    assert html.count("<table") == 1 and "<b>recipes</b>" in html and "ranked by AP50@100" in html
    assert "<td>99.9</td>" in html and "<td>agreement</td>" in html
    assert str(report).startswith("ranked by AP50@100\nrecipes\n")


def test_without_pandas_the_notebook_shows_the_text(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pandas" else real(name, *a))
    assert Report([Table(ROWS)])._repr_html_() is None


def test_show_prints_outside_a_notebook(capsys):
    tables.show(Report(["hello", Table(ROWS)]))
    out = capsys.readouterr().out
    assert out.startswith("hello\nrecipe") and "agreement" in out
