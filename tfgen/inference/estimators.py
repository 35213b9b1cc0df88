"""Data-set level estimates: the mean ELBO terms and the log-likelihood over a split, in nats
per image, from a scheme's per-image estimators (validation during training, the evaluation
tasks after it).

Log-likelihoods are reported as the mean over the N images of the per-image estimates, with
the standard error of that mean, sd / sqrt(N) (sample sd, ddof = 1): it covers both the
spread of log p(y) over images and each estimate's own Monte Carlo noise.  It says nothing of
the estimator's bias (an importance or AIS estimate is a stochastic lower bound).
"""
from __future__ import annotations

import numpy as np

from tfgen.data import Split, eval_dataset
from tfgen.inference.proposals import POSTERIOR, Proposal


def mean_elbo(scheme, split: Split, batch_size: int, seed: int, mc_samples: int = 1,
              max_images: int = 0) -> dict[str, float]:
    """Mean ELBO, reconstruction term and KL over a split, in nats per image."""
    sums = {"elbo": 0.0, "reconstruction": 0.0, "kl": 0.0}
    count = 0
    for i, (images, _) in enumerate(eval_dataset(_head(split, max_images), batch_size)):
        terms = scheme.elbo_terms(images, [seed, i], mc_samples)
        for key in sums:
            sums[key] += float(np.sum(getattr(terms, key)))
        count += int(images.shape[0])
    return {key: value / count for key, value in sums.items()}


def per_image(estimate, split: Split, batch_size: int, max_images: int = 0) -> np.ndarray:
    """``estimate(images, batch_index) -> [B]`` over the first ``max_images`` of a split."""
    values = [np.asarray(estimate(images, i))
              for i, (images, _) in enumerate(eval_dataset(_head(split, max_images), batch_size))]
    return np.concatenate(values)


def summary(values: np.ndarray) -> dict[str, float]:
    """Mean per-image log-likelihood (nats) and the standard error of that mean."""
    values = np.asarray(values, np.float64)
    return {"log_likelihood": float(values.mean()),
            "log_likelihood_stderr": (float(values.std(ddof=1) / np.sqrt(len(values)))
                                      if len(values) > 1 else 0.0),
            "images": int(len(values))}


def mean_log_likelihood(scheme, split: Split, batch_size: int, seed: int, num_samples: int,
                        max_images: int = 0, proposal: Proposal = POSTERIOR) -> dict[str, float]:
    """Importance-sampled log p(y) (K = ``num_samples`` draws of ``proposal`` per image)
    averaged over images (nats/image) and its standard error."""
    return summary(per_image(
        lambda images, i: scheme.log_likelihood_estimate(images, [seed, i], num_samples, proposal),
        split, batch_size, max_images))


def _head(split: Split, max_images: int) -> Split:
    if max_images and max_images < len(split):
        return Split(split.images[:max_images], split.labels[:max_images])
    return split
