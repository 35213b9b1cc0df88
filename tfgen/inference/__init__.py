"""Inference schemes, one module each (``tfgen.assemble`` imports them), and the
pieces they share: capabilities, per-datapoint latents, kernels, test-time fitting, the
data-set level estimators (mean ELBO, log-likelihood), the latent samplers and the image
grids of a scheme's samples and reconstructions."""
