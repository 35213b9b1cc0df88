"""Turns a validated config into a trained, evaluated run directory."""
from __future__ import annotations

import json
from pathlib import Path

import tensorflow as tf

from tfgen import runtime
from tfgen.config import Config, load_config
from tfgen.data import DataBundle, load_data
from tfgen.errors import ConfigError, TfgenError
from tfgen.evaluation.tasks import EvalContext
from tfgen.models.model import build_model
from tfgen.registry import EVALUATIONS, SCHEMES
from tfgen.rundir import CONFIG_NAME, create_run_dir, write_config, write_metrics, write_run_info
from tfgen.training import Interrupted, Progress, Trainer


def build(cfg: Config, data: DataBundle | None = None):
    """Everything that can fail on bad input happens here, before a run directory exists.

    ``data`` replaces the configured data set (tests and benchmarks pass in-memory images);
    returns (data, scheme, generator).
    """
    generator = runtime.apply_seed(cfg.experiment.seed)
    if data is None:
        data = load_data(cfg.data, cfg.experiment.seed, cfg.source_file)
    strategy = runtime.strategy(cfg.train.strategy)
    with strategy.scope():
        model = build_model(cfg, data.image_shape, data.pixel_range)
        scheme_cls = SCHEMES.get(cfg.inference.name).factory
        scheme = scheme_cls(cfg.inference.params, model, data, cfg, generator, strategy)
    return data, scheme, generator


def run(config_path: str | None, overrides: list[str], resume: str | None, quiet: bool) -> Path:
    if resume:
        run_dir = Path(resume)
        config_file = run_dir / CONFIG_NAME
        if not config_file.exists():
            raise ConfigError(str(run_dir), None, "not a run directory (no config.toml)")
        cfg = load_config(config_file, overrides)
    else:
        cfg = load_config(config_path, overrides)
    progress = Progress(cfg.logging.progress and not quiet)
    data, scheme, generator = build(cfg)
    if not resume:
        run_dir = create_run_dir(cfg)
    write_config(run_dir, cfg)
    write_run_info(run_dir, cfg, overrides, bool(resume))
    progress.message(f"run directory: {run_dir}\ndata: {data.description}; train {len(data.train)}"
                     f", val {len(data.val) if data.val else 0}, test {len(data.test) if data.test else 0}"
                     f", images {data.image_shape}; compile: {runtime.resolve_compile(cfg.train.compile)}")
    trainer = Trainer(cfg, data, scheme, run_dir, progress, generator)
    if resume:
        if not trainer.restore():
            raise ConfigError(str(run_dir), None, "has no checkpoint to resume from")
        progress.message(f"resumed at step {int(trainer.step.numpy())}")
    writer = tf.summary.create_file_writer(str(run_dir / "tensorboard"))
    metrics = {"status": "running", "run_dir": str(run_dir)}
    try:
        with writer.as_default():
            metrics["train"] = trainer.fit()
            metrics["evaluation"] = evaluate(cfg, scheme, data, run_dir, trainer.history,
                                             int(trainer.step.numpy()))
        metrics["status"] = "completed"
    except Interrupted as err:
        metrics["status"] = f"interrupted: {err}"
        raise
    except TfgenError as err:
        metrics["status"] = f"failed: {err}"
        raise
    except KeyboardInterrupt:  # a Ctrl-C after training, during evaluation
        metrics["status"] = "interrupted during evaluation"
        raise Interrupted(f"interrupted during evaluation; the trained state is in "
                          f"{run_dir / 'checkpoints'}; evaluate again with: tfgen run --resume "
                          f"{run_dir}") from None
    except BaseException as err:
        metrics["status"] = f"failed: {type(err).__name__}"
        raise
    finally:
        writer.flush()
        metrics["history"] = trainer.history
        write_metrics(run_dir, metrics)
    progress.message("evaluation: " + json.dumps(metrics["evaluation"], default=float))
    progress.message(f"done: {run_dir}")
    return run_dir


def evaluate(cfg: Config, scheme, data, run_dir: Path, history: list, step: int) -> dict:
    ctx = EvalContext(cfg, scheme, data, run_dir, history, step)
    results: dict = {}
    for task in cfg.evaluate:
        results.update(EVALUATIONS.get(task.name).factory(task.params, ctx) or {})
    for key, value in results.items():
        if isinstance(value, float):
            tf.summary.scalar(f"eval/{key}", value, step=step)
    return results
