"""The latent-geometry ``[[evaluate]]`` tasks (Arvanitidis, Hansen & Hauberg 2018; Grisi & Darcet
2020), one module each: metric_map, geodesics, random_walk, geodesic_kmeans and rbf_precision, over
what they share (:mod:`~tfgen.geometry.tasks.common`).

Each needs a decoder with a likelihood (:class:`~tfgen.inference.capabilities.DecoderLikelihood`)
and the latents of some data (:mod:`tfgen.evaluation.latent_selection`): the scheme's
q(z | y) means (``latents = "posterior"``: an encoder, or a q fitted at test time) or its
per-datapoint latents (``"cloud"``: e.g. PGA's particles, training images only); ``"auto"``
takes an encoder if there is one, else the cloud for the training split, else the fitted q.
Maps are drawn over the latent plane (d = 2) or the plane of the data latents' first two
principal components (d > 2, the PCA of :mod:`tfgen.evaluation.latent_selection`; there the
map shows the metric restricted to the plane, basis^T M basis).  ``variance =
"rbf_precision"`` runs a task on the model whose sigma is the RBF precision network of
:mod:`tfgen.geometry.precision` (Normal likelihoods), fitted by the ``rbf_precision`` task
and stored in the run directory (``geometry/rbf_precision.npz``), or fitted with its
defaults when the task has not run.  Geometry runs in graph mode (``tf.function``) unless
the run is eager: its loops have data-dependent sizes, which XLA would recompile.
"""
