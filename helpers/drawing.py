"""Drawing nuclei: the outline of each mask, shared by notebook 01's sample figure
(:mod:`helpers.data.prepare`) and the prediction overlays (:mod:`helpers.infer.overlays`)."""
from __future__ import annotations

import numpy as np


def outline(labels: np.ndarray) -> np.ndarray:
    """Pixels of a nucleus that touch another label (background or a neighbour) in 4-connectivity.

    ``labels``: an (H, W) label map (0 = background), or one bool mask.
    """
    edge = np.zeros(labels.shape, bool)
    dv = labels[1:, :] != labels[:-1, :]
    dh = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= dv
    edge[:-1, :] |= dv
    edge[:, 1:] |= dh
    edge[:, :-1] |= dh
    return edge & (labels > 0)
