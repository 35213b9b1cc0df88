"""Fingerprints of short runs, to show that a refactor changes no number, key or figure.

``record`` runs a few very short experiments (the repo's own TOML files, cut down with
``--set``: a few hundred images, one or two epochs, small evaluation tasks) through
:func:`tfgen.runner.run`, each in a fresh process (nothing carried over in TensorFlow's
state), and writes one JSON file: per run, every number of its metrics.json except times
(keys naming seconds or a rate), the keys of its metrics, and a SHA-256 of every figure
(PNG) it wrote; plus the resolved config (:func:`tfgen.config.load_config`, as the run
directory's config.toml writes it) of every experiment in experiments/.  ``compare`` prints
what differs between two such files and exits 1 if anything does.

    python tools/compare_runs.py record before.json            # on the old code
    python tools/compare_runs.py record after.json             # on the new code
    python tools/compare_runs.py compare before.json after.json
    python tools/compare_runs.py record x.json --only latent_pca

The classifier of ``sample_quality`` is cached under the output directory (``--out-dir``,
default runs/compare), so only the first recording trains it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SMALL_DATA = ['data.train_split="train[:256]"', 'data.val_split="train[50000:50256]"',
              'data.test_split="test[:256]"', "train.epochs=1", "train.batch_size=64",
              "logging.images_every_steps=2"]
#: latent_geometry.toml's evaluation list, small
SMALL_GEOMETRY = [
    "evaluate.1.samples=5", "evaluate.1.max_images=64",
    "evaluate.2.centres=16", "evaluate.2.samples=5", "evaluate.2.max_images=64",
    "evaluate.2.num_points=200", "evaluate.2.resolution=12",
    "evaluate.3.resolution=16", "evaluate.3.num_points=200",
    "evaluate.4.pairs=4", "evaluate.4.segments=8", "evaluate.4.resolution=12",
    "evaluate.4.shooting=2", "evaluate.4.ode_steps=10",
    "evaluate.5.pairs=4", "evaluate.5.segments=8", "evaluate.5.resolution=12",
    "evaluate.5.shooting=0",
    "evaluate.6.steps=20", "evaluate.6.resolution=12", "evaluate.6.scale_points=100",
    "evaluate.7.steps=20", "evaluate.7.resolution=12", "evaluate.7.scale_points=100",
    "evaluate.8.num_points=120", "evaluate.9.num_points=120"]
#: (name, experiment, overrides): short runs that reach the code being refactored
RUNS = [
    ("latent_geometry", "latent_geometry.toml", SMALL_DATA + SMALL_GEOMETRY),
    # d = 3: the tasks draw over the latents' PCA plane
    ("latent_geometry_3d", "latent_geometry.toml",
     SMALL_DATA + ["model.prior.dim=3"] + SMALL_GEOMETRY),
    ("latent_geometry_pga", "latent_geometry_pga.toml", [
        "data.subsample=200", "train.epochs=2", "logging.images_every_steps=2",
        "evaluate.1.centres=8", "evaluate.1.fit_images=200", "evaluate.1.max_images=32",
        "evaluate.1.samples=5", "evaluate.1.num_points=200", "evaluate.1.resolution=12",
        "evaluate.2.resolution=16", "evaluate.2.num_points=200",
        "evaluate.3.pairs=4", "evaluate.3.segments=8", "evaluate.3.resolution=12",
        "evaluate.3.shooting=0",
        "evaluate.4.steps=20", "evaluate.4.resolution=12", "evaluate.4.scale_points=100",
        "evaluate.5.num_points=120"]),
    ("latent_pca", "latent_pca.toml", SMALL_DATA),
    ("interpolation", "interpolation.toml", SMALL_DATA),
    ("gmm_mnist", "gmm_mnist.toml", ['data.train_split="train[:2000]"',
                                     'data.test_split="test[:500]"', "train.epochs=3",
                                     "inference.init_images=1000"]),
    ("pga_quick", "pga_quick.toml", [
        "data.subsample=300", "train.epochs=2", "logging.images_every_steps=2",
        'data.test_split="test[:500]"',
        'evaluate.0.sampler="gmm"',                       # the GMM sampler's samples
        "evaluate.2.num_images=4", "evaluate.2.fit.steps=20", "evaluate.2.fit.sampler=\"gmm\"",
        "evaluate.4.num_points=200", "evaluate.5.num_points=200",
        "evaluate.6.num_pairs=2",
        'evaluate.7.sampler="gmm"', "evaluate.7.num_samples=300",
        "evaluate.7.max_reference=300"]),
    # the RealNVP coupling networks: the realnvp prior (under vae and pga) and the flow scheme
    ("vae_flow_prior", "vae_flow_prior.toml", SMALL_DATA + [
        "train.epochs=2", "train.steps_per_epoch=3", 'evaluate=[{task="elbo", split="test"}, '
        '{task="samples"}]']),
    ("pga_flow_prior", "pga_flow_prior.toml", [
        "data.subsample=300", "train.epochs=2", "train.steps_per_epoch=3",
        'data.test_split="test[:256]"', 'evaluate=[{task="samples", sampler="prior"}]']),
    ("realnvp_mnist", "realnvp_mnist.toml", SMALL_DATA + [
        "train.epochs=2", "train.steps_per_epoch=3", 'evaluate=[{task="log_likelihood", '
        'estimator="exact", max_images=64}, {task="samples"}]']),
]
#: metrics that measure time (they differ from run to run), and whether a classifier came from
#: the cache (the first recording trains it, later ones read it)
TIMING = ("seconds", "per_second", "_time", "classifier_cached")


def numbers(node, prefix: str = "") -> dict:
    """Flattened leaves of a metrics tree, times left out."""
    out = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if any(t in key for t in TIMING):
                continue
            out.update(numbers(value, f"{prefix}{key}."))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.update(numbers(value, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = node
    return out


def record_one(name: str, out_dir: Path) -> dict:
    """One run in this process: its metrics (no times) and figure hashes."""
    from tfgen.runner import run

    _, experiment, overrides = next(r for r in RUNS if r[0] == name)
    overrides = overrides + [f'experiment.output_dir="{out_dir}"',
                             f'experiment.name="compare_{name}"']
    run_dir = run(str(REPO / "experiments" / experiment), overrides, None, quiet=True,
                  memory_check=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("run_dir", None)
    figures = {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in sorted(run_dir.rglob("*.png"))}
    return {"metrics": numbers({k: v for k, v in metrics.items() if k != "evaluation_seconds"}),
            "figures": figures}


def resolved_configs() -> dict:
    from tfgen.assemble import load_config
    from tfgen.config import to_dict

    return {path.name: to_dict(load_config(path))
            for path in sorted((REPO / "experiments").glob("*.toml"))}


def record(path: Path, only: list[str], out_dir: Path) -> None:
    result = {"configs": resolved_configs(), "runs": {}}
    for name, _, _ in RUNS:
        if only and name not in only:
            continue
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            print(f"run {name} ...", flush=True)
            subprocess.run([sys.executable, __file__, "_one", name, tmp.name, str(out_dir)],
                           check=True, cwd=REPO)
            result["runs"][name] = json.loads(Path(tmp.name).read_text())
    path.write_text(json.dumps(result, indent=1, sort_keys=True, default=str))
    print(f"wrote {path}")


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def compare(before: Path, after: Path) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    differences = []
    for name in sorted(set(a["configs"]) | set(b["configs"])):
        if a["configs"].get(name) != b["configs"].get(name):
            differences.append(f"config {name}: resolved configs differ")
    for name in sorted(set(a["runs"]) | set(b["runs"])):
        ra, rb = a["runs"].get(name), b["runs"].get(name)
        if ra is None or rb is None:
            differences.append(f"run {name}: only in {'after' if ra is None else 'before'}")
            continue
        for part in ("metrics", "figures"):
            for key in sorted(set(ra[part]) | set(rb[part])):
                va, vb = ra[part].get(key, "<missing>"), rb[part].get(key, "<missing>")
                if not same(va, vb):
                    differences.append(f"run {name} {part} {key}: {va} -> {vb}")
    counts = {name: (len(r["metrics"]), len(r["figures"])) for name, r in a["runs"].items()}
    print(f"{len(a['configs'])} resolved configs, runs (metrics, figures): {counts}")
    print("\n".join(differences) if differences else "identical")
    return 1 if differences else 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_one":
        _, _, name, out, out_dir = sys.argv
        Path(out).write_text(json.dumps(record_one(name, Path(out_dir)), default=str))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("path", type=Path)
    rec.add_argument("--only", nargs="*", default=[])
    rec.add_argument("--out-dir", type=Path, default=REPO / "runs" / "compare")
    cmp = sub.add_parser("compare")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        record(args.path, args.only, args.out_dir.resolve())
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
