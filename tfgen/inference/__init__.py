"""Inference schemes, one module each (``tfgen.assemble`` imports them), and the
pieces they share: capabilities, per-datapoint latents, kernels, test-time fitting."""
