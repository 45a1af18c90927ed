"""Loss curves from the TensorBoard events of the shared demo heads run."""
import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from helpers.train import curves  # noqa: E402


@pytest.fixture(scope="session")
def heads_ws(heads):
    return heads[0]


def test_read_curves_has_every_step(heads_ws):
    c = curves.read_curves(heads_ws, "heads")
    steps, vals = c["total_loss"]
    assert steps == list(range(1, 11)) and all(v > 0 for v in vals)
    for k in curves.LOSS_KEYS + ("learning_rate",):
        assert k in c
    assert c["_run_starts"] == [1]


def test_plot_curves_draws_losses_and_lr(heads_ws):
    fig = curves.plot_curves(heads_ws, "heads")
    loss_ax, lr_ax = fig.axes
    labels = [l.get_label() for l in loss_ax.get_lines()]
    assert "total_loss" in labels and "mask_loss" in labels
    assert len(loss_ax.get_lines()[0].get_xdata()) == 10
    assert len(lr_ax.get_lines()[0].get_xdata()) == 10


def test_no_summaries_is_a_clear_error(tmp_path):
    from helpers.workspace import get_workspace

    with pytest.raises(FileNotFoundError, match="no training summaries"):
        curves.plot_curves(get_workspace(tmp_path / "w"), "heads")
