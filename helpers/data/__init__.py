"""Data: the course dataset, its manifest, and the TFRecord shards every later notebook reads
(notebook 01 is :mod:`helpers.data.prepare`)."""
