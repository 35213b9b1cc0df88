"""The Riemannian geometry of a decoder's latent space (Arvanitidis, Hansen & Hauberg 2018; Grisi & Darcet 2020).

Arvanitidis, Hansen & Hauberg, "Latent Space Oddity: on the Curvature of Deep Generative
Models" (ICLR 2018); Chen et al., "Fast Approximate Geodesics for Deep Generative Models"
(2019).  One concept per module:

* :mod:`~tfgen.geometry.metric` -- the expected metric M(z) = J_mu^T J_mu + J_sigma^T J_sigma,
  batched, compiled, chunked; the magnification factor sqrt(det M).
* :mod:`~tfgen.geometry.curves` -- discrete curves: energy, Riemannian length.
* :mod:`~tfgen.geometry.geodesics` -- shortest curves by energy minimisation, and the
  geodesic ODE integrated by shooting (a check).
* :mod:`~tfgen.geometry.random_walk` -- Euclidean and Riemannian (covariance M(z)^-1) walks.
* :mod:`~tfgen.geometry.clustering` -- graph geodesic distances, geodesic k-medoids, purity
  (Euclidean k-means: :mod:`tfgen.models.kmeans`).
* :mod:`~tfgen.geometry.precision` -- the RBF precision decoder variance (the paper's fix).
* :mod:`~tfgen.geometry.tasks` -- the ``[[evaluate]]`` tasks, one module each (their maps and
  plots are drawn with :mod:`tfgen.figures`).
"""
