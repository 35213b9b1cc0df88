"""Evaluation tasks (``[[evaluate]] task = ...``), registered by name."""
from tfgen.evaluation import tasks  # noqa: F401
from tfgen.evaluation import inpainting  # noqa: F401
