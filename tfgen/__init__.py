"""tfgen: a declarative, TOML-driven experiment runner for deep latent-variable generative models.

The Python API (README, "Using a run from Python"): :func:`load_config`, :func:`run` and
:func:`open_run`, from :mod:`tfgen.api`.  They are imported on first use (PEP 562's module
``__getattr__``), so that ``import tfgen`` stays light: the command line imports TensorFlow
itself, quietly (tfgen.cli), before anything else does.
"""

__version__ = "0.1.0"
__all__ = ["load_config", "run", "open_run"]


def __getattr__(name: str):
    if name in __all__:
        from tfgen import api

        return getattr(api, name)
    raise AttributeError(f"module 'tfgen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
