"""An example tfgen plugin: importing it registers one component of three kinds.

* network ``skip_mlp`` (:mod:`.networks`): an MLP whose head also sees its input;
* likelihood ``laplace`` (:mod:`.likelihoods`): independent Laplace pixels;
* evaluation task ``mean_pixel_error`` (:mod:`.tasks`): the mean absolute error of
  reconstructions.

The entry point (pyproject.toml) names this module; tfgen imports it after its own components.
"""
from tfgen_plugin_example import likelihoods, networks, tasks  # noqa: F401  (they register)
