"""Evaluation tasks (``registry.load_components`` imports them), metrics, figures, samplers."""
