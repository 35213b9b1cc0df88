"""Evaluation tasks (``tfgen.assemble`` imports them), the latents of a split they
look at (latent_selection), bits per dimension, sample-quality distances and classifiers."""
