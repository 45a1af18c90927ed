"""Tasks registered with Model Garden's ``task_factory`` (as ``official/vision/tasks``)."""
