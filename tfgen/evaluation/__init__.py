"""Evaluation tasks (``tfgen.assemble`` imports them), metrics, figures, samplers."""
