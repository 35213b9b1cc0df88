"""tfgen: a declarative, TOML-driven experiment runner for deep latent-variable generative models."""

__version__ = "0.1.0"
