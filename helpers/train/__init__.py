"""Training: profiles and the Model Garden experiment config, the input pipeline, stages and
their checkpoints (notebooks 02 and 03 are :mod:`helpers.train.training`)."""
