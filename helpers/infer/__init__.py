"""Inference: prediction, test-time augmentation, evaluation, ensembles, rescoring and the
submission (notebooks 04 and 05 are :mod:`helpers.infer.selection`)."""
