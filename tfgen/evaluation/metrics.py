"""Data-set level estimates: mean ELBO terms and importance-sampled log-likelihood over a split."""
from __future__ import annotations

import numpy as np

from tfgen.data import Split, eval_dataset


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


def mean_log_likelihood(scheme, split: Split, batch_size: int, seed: int, num_samples: int,
                        max_images: int = 0) -> dict[str, float]:
    """IWAE estimate of log p(y) averaged over images (nats/image) and its standard error."""
    values = []
    for i, (images, _) in enumerate(eval_dataset(_head(split, max_images), batch_size)):
        values.append(np.asarray(scheme.log_likelihood_estimate(images, [seed, i], num_samples)))
    values = np.concatenate(values)
    return {"log_likelihood": float(values.mean()),
            "log_likelihood_stderr": float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0,
            "images": int(len(values))}


def _head(split: Split, max_images: int) -> Split:
    if max_images and max_images < len(split):
        return Split(split.images[:max_images], split.labels[:max_images])
    return split
