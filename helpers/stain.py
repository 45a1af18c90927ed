"""H&E colour deconvolution (Ruifrok & Johnston 2001): one home for the stain matrix that the
training's stain jitter (``helpers.train.train_input``) and the exports' haematoxylin
measurements (``helpers.infer.exports``) both use.

The rows of :data:`RGB_FROM_HED` are the haematoxylin, eosin and DAB stain vectors, the matrix
scikit-image's ``rgb2hed`` inverts. Optical density is -ln(RGB), the units of skimage < 0.19
that Tellez et al.'s stain-jitter sigma (0.05 for "HED-light") refers to.
"""
from __future__ import annotations

import numpy as np

RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)


def hed_optical_density(rgb: np.ndarray) -> np.ndarray:
    """Stain optical densities (..., 3: haematoxylin, eosin, DAB) of a uint8 RGB image."""
    od = -np.log(np.maximum(np.asarray(rgb, np.float32) / 255.0, 1e-6))
    return (od @ HED_FROM_RGB.astype(np.float32)).astype(np.float32)
