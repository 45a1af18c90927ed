"""Experiment configs registered with Model Garden's ``exp_factory`` (as ``official/vision/configs``)."""
