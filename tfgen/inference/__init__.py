"""Inference schemes, one module each; importing this package registers them."""
from tfgen.inference import vae  # noqa: F401
from tfgen.inference import pga  # noqa: F401
