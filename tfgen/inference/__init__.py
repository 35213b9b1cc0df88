"""Inference schemes, one module each (``registry.load_components`` imports them), and the
pieces they share: capabilities, per-datapoint latents, kernels, test-time fitting."""
