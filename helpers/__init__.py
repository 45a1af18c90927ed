"""Helpers for the nuclei Mask R-CNN notebooks.

One module per concern; the notebooks in ``notebooks/`` only call these.
"""
