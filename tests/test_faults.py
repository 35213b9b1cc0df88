"""Faults, tried as a hostile or unlucky user would try them, through the CLI (issue 7).

Input (items 1, 5, 7c): run names that would escape ``experiment.output_dir``; the resolved
config's round trip for every value the loader accepts; damaged or wrong data files; TFDS
names TFDS cannot use; ``tfgen validate`` listing every error of a file.

Runs (items 2, 3, 4, 6, 7a, 7b): a kill inside a checkpoint save; damaged checkpoint files;
a resume with changed settings; memory estimates (bombs refused, the estimate near the
truth); TensorFlow errors during a run; wrong ``--resume`` paths; stop signals (Ctrl-C,
SIGTERM, SIGUSR1: issue 17) in training, saving and evaluation, once and twice.

Each refusal checks the exit code, one line per error naming the file and key, no
traceback, and the directories byte for byte unchanged where nothing may change.  Kills and
signals run the real console script in a process of its own.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import typing
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO, blob_images, learned, run_cli, run_process, tiny_config, write_idx
from tfgen.assemble import from_dict, load_config
from tfgen.checkpoints import KILL_HOOK
from tfgen.config import RUN_NAME, dumps_toml, to_dict
from tfgen.errors import ConfigError, ConfigErrors
from tfgen.schema import Component
from tfgen.signals import TEST_HOOK

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib

STEPS = ("--set", "train.steps_per_epoch=2")  # 2 steps of 32 images per epoch: ckpt-2, ckpt-4 ...


# --------------------------------------------------------------------------- helpers

def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (and the folders, as "dir")."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


def one_line(stderr: str, prefix: str = "error: ") -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(prefix), stderr
    assert "Traceback" not in stderr
    return lines[0]


def only_run_dir(out: Path, name: str = "tiny") -> Path:
    runs = [p for p in (out / name).iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def checkpoint_value(run_dir: Path, name: str):
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    return tf.train.load_variable(latest, f"{name}/.ATTRIBUTES/VARIABLE_VALUE")


def readable(prefix: str) -> bool:
    reader = tf.train.load_checkpoint(prefix)
    for key in reader.get_variable_to_shape_map():
        reader.get_tensor(key)
    return True


@pytest.fixture(scope="module")
def finished(tmp_path_factory, idx_folder):
    """A finished 2-epoch run (checkpoints ckpt-2 and ckpt-4); tests resume copies of it."""
    out = tmp_path_factory.mktemp("finished")
    config = out / "tiny.toml"
    config.write_text(tiny_config(idx_folder, out, epochs=2))
    result = run_cli("run", str(config), "--quiet", *STEPS)
    assert result.returncode == 0, result.stderr
    return only_run_dir(out)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, idx_folder):
    """The same run trained 3 epochs without a stop: what every resumed run must equal."""
    out = tmp_path_factory.mktemp("straight")
    config = out / "tiny.toml"
    config.write_text(tiny_config(idx_folder, out, epochs=3))
    assert run_cli("run", str(config), "--quiet", *STEPS).returncode == 0
    return metrics(only_run_dir(out))


@pytest.fixture
def run_dir(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def resume(run_dir: Path, *sets: str):
    args = [arg for s in sets for arg in ("--set", s)]
    return run_cli("run", "--resume", str(run_dir), "--quiet", *args)


def assert_same_as_straight(run_dir: Path, straight: dict) -> None:
    got = metrics(run_dir)
    assert got["status"] == "completed"
    assert [h["epoch"] for h in got["history"]] == [1, 2, 3]
    for a, b in zip(learned(got["history"]), learned(straight["history"])):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-5), key


def toml_str(text: str) -> str:
    """A TOML basic string written independently of tfgen's writer (JSON escapes are TOML's)."""
    return json.dumps(text, ensure_ascii=True)


def refused(result, *parts: str, lines: int = 1) -> list[str]:
    """Exit 2, ``lines`` lines of 'error: ...' on stderr, no traceback; each part appears."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    message = result.stderr.strip().splitlines()
    assert len(message) == lines, message
    assert all(line.startswith("error: ") for line in message), message
    for part in parts:
        assert part in result.stderr, (part, result.stderr)
    return message


def tiny(tmp_path: Path, idx_folder: Path, source: str | None = None, path: Path | None = None,
         **replace: str) -> tuple[Path, Path]:
    """The tiny experiment of conftest, written to ``tmp_path`` (runs go to tmp_path/out).

    ``source``/``path`` point its data elsewhere (one 'train' split, nothing else);
    ``replace`` swaps pieces of its text (``'name = "tiny"'`` -> ...).
    """
    out = tmp_path / "out"
    text = tiny_config(idx_folder, out)
    if source is not None:
        replace = {'source = "idx"': f'source = "{source}"',
                   f'path = "{idx_folder}"': f'path = "{path}"',
                   'train_split = "train[:128]"': 'train_split = "train"',
                   'val_split = "train[128:]"': 'val_split = ""',
                   'test_split = "test"': 'test_split = ""', **replace}
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    config = tmp_path / "exp.toml"
    config.write_text(text, encoding="utf-8")
    return config, out


# --------------------------------------------------------------------------- 1. run names

BAD_NAMES = [
    "../../escaped", "/an/absolute/dir", "a/b", "..", ".", ".hidden", "", "a\nb", "a\x00b",
    "tab\there", "x" * 101, "a b", "-rf", "a\\b", "C:\\runs", "\u540d\u524d", "~", "a..b",
    "\x7f", "name/", "caf\u00e9", "a\u2028b",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[1:-1][:20] or "empty" for n in BAD_NAMES])
def test_bad_run_names_are_refused_before_anything_is_written(tmp_path, idx_folder, name):
    config, out = tiny(tmp_path, idx_folder, **{'name = "tiny"': f"name = {toml_str(name)}"})
    before = digest(tmp_path)
    result = run_cli("run", str(config), "--quiet")
    refused(result, str(config), "experiment.name", f"given {name!r}", "allowed: 1 to 100")
    assert digest(tmp_path) == before and not out.exists()
    assert not Path("/an").exists()


def test_a_bad_name_from_set_is_refused_too(tmp_path, idx_folder):
    config, out = tiny(tmp_path, idx_folder)
    before = digest(tmp_path)
    result = run_cli("run", str(config), "--quiet", "--set", "experiment.name=../../escaped")
    refused(result, "experiment.name", "'../../escaped'")
    assert digest(tmp_path) == before


def test_allowed_names_are_single_folder_names():
    pattern = RUN_NAME[0]
    for ok in ["tiny", "vae_mnist-2", "v1.2", "_x", "0", "x" * 100, "A.b_c-d"]:
        assert re.fullmatch(pattern, ok) and from_dict(
            {"experiment": {"name": ok}, "data": {"binarize": "static"}}).experiment.name == ok


def test_a_name_folder_linking_out_of_output_dir_is_refused(tmp_path, idx_folder):
    """Defence in depth: the resolved run folder must lie directly in output_dir."""
    config, out = tiny(tmp_path, idx_folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "tiny").symlink_to(elsewhere, target_is_directory=True)
    before = digest(tmp_path)
    result = run_cli("run", str(config), "--quiet")
    refused(result, str(config), "experiment.name", str(elsewhere), "experiment.output_dir")
    assert digest(tmp_path) == before


def test_an_output_dir_that_is_a_file_is_refused(tmp_path, idx_folder):
    config, out = tiny(tmp_path, idx_folder)
    out.write_text("not a folder")
    before = digest(tmp_path)
    result = run_cli("run", str(config), "--quiet")
    refused(result, str(config), "experiment.output_dir", "cannot create a run directory")
    assert digest(tmp_path) == before


# --------------------------------------------------------------------------- 1. round trip

#: characters a config string may hold: all of ASCII (control characters, quotes, backslash,
#: DEL), TOML-special sequences, and non-ASCII up to the astral planes; no lone surrogates,
#: which the loader refuses (tested below)
ALPHABET = ([chr(i) for i in range(128)]
            + ['"""', "'''", "\\u0041", "\\n", "é", "漢", "😀", "\u0085", "\u2028", "\ufeff",
               "\u200b", "\U0010fffd", "\x80", "\x9f"])


def random_text(rng: np.random.Generator, max_len: int = 40, min_len: int = 0) -> str:
    # drawn by index: a NumPy string array would drop trailing NULs ("\x00" alone -> "")
    size = int(rng.integers(min_len, max_len + 1))
    return "".join(ALPHABET[i] for i in rng.integers(0, len(ALPHABET), size=size))


def random_key(rng: np.random.Generator) -> str:
    return random_text(rng, 8) if rng.random() < 0.5 else "".join(
        rng.choice(list("abcXYZ019_-"), size=int(rng.integers(1, 8))))


def random_value(rng: np.random.Generator, depth: int) -> typing.Any:
    kind = rng.integers(0, 9 if depth < 3 else 5)
    if kind == 0:
        return random_text(rng)
    if kind == 1:
        return int(rng.integers(-2**63, 2**63 - 1))
    if kind == 2:
        return float(rng.choice([rng.normal() * 10.0 ** rng.integers(-300, 300), 0.0, -0.0,
                                 math.inf, -math.inf, 5e-324, 1e308]))
    if kind == 3:
        return bool(rng.integers(0, 2))
    if kind == 4:
        return [random_text(rng) for _ in range(rng.integers(0, 4))]
    if kind in (5, 6):
        return random_table(rng, depth + 1)
    if kind == 7:  # an array of tables
        return [random_table(rng, depth + 1) for _ in range(rng.integers(1, 4))]
    return [random_value(rng, depth + 1) for _ in range(rng.integers(0, 4))]  # mixed array


def random_table(rng: np.random.Generator, depth: int = 0) -> dict:
    return {random_key(rng): random_value(rng, depth) for _ in range(rng.integers(0, 6))}


def test_toml_writer_round_trips_random_documents():
    """Any nesting of tables, arrays of tables, arrays and scalars, with arbitrary keys and text."""
    rng = np.random.default_rng(7)
    for _ in range(400):
        doc = random_table(rng)
        text = dumps_toml(doc)
        assert tomllib.loads(text) == doc, text


def randomized(obj: typing.Any, rng: np.random.Generator, path: str = "") -> None:
    """Replace every free-text, float and bool leaf of a parsed config by a random value its
    field allows (names by a random valid name); ints and choices are kept, as cross-section
    checks tie them together (bins, patience, kernels per channel)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.metadata.get("internal"):
            continue
        value, tp, key = getattr(obj, f.name), hints[f.name], f"{path}.{f.name}"
        if isinstance(value, Component):
            randomized(value.params, rng, key)
        elif isinstance(value, list) and value and isinstance(value[0], Component):
            for item in value:
                randomized(item.params, rng, key)
        elif dataclasses.is_dataclass(value):
            randomized(value, rng, key)
        elif f.metadata.get("pattern") and isinstance(value, list):  # structured: host:port
            host = lambda: "".join(rng.choice(list("abcXYZ019_.-"), size=int(rng.integers(1, 12))))  # noqa: E731
            setattr(obj, f.name, [f"h{i}{host()}:{int(rng.integers(1, 65536))}"
                                  for i in range(int(rng.integers(0, 3)))])
            if f.name == "workers" and obj.workers:  # a cross-section rule: only multi_worker
                obj.strategy = "multi_worker"
        elif f.metadata.get("pattern"):
            setattr(obj, f.name, "".join(rng.choice(list("abcXYZ0189_"), size=3)) + "".join(
                rng.choice(list("abXY09._-"), size=int(rng.integers(0, 20)))).replace("..", "._"))
        elif f.name.endswith("_file"):  # a file the loader reads (a mask): not free text
            continue
        elif tp in (str, typing.Optional[str]):  # not empty: an empty split turns tasks off
            setattr(obj, f.name, random_text(rng, min_len=1))
        elif tp is bool:
            setattr(obj, f.name, bool(rng.integers(0, 2)))
        elif tp is float:
            lo = f.metadata.get("at_least")
            lo = f.metadata.get("above") if lo is None else lo
            hi = f.metadata.get("at_most")
            lo = 0.0 if lo is None else lo
            hi = lo + 10.0 ** rng.integers(-8, 8) if hi is None else hi
            x = float(rng.uniform(lo, hi))
            setattr(obj, f.name, x if x > lo or f.metadata.get("above") is None else hi)


EXPERIMENTS = sorted((REPO / "experiments").glob("*.toml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_resolved_config_round_trips_random_values(path):
    """Property: whatever the loader accepts, dumps_toml writes so that it loads back equal."""
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    base = load_config(path)
    for _ in range(40):
        cfg = load_config(path)
        randomized(cfg, rng)
        if cfg.runtime.workers and getattr(cfg.inference.params, "n_critic", 1) > 1:
            cfg.runtime.workers, cfg.runtime.strategy = [], "default"  # one replica only
        raw = to_dict(cfg)
        accepted = from_dict(raw, "random")  # the loader accepts every value randomized() makes
        text = dumps_toml(to_dict(accepted))
        assert tomllib.loads(text) == to_dict(accepted), text
        again = from_dict(tomllib.loads(text), "again")
        assert to_dict(again) == to_dict(accepted)
    assert to_dict(base) == to_dict(load_config(path))


def test_control_characters_survive_the_runs_config_file(tmp_path, idx_folder):
    """A description with control characters: the run's config.toml reads back (as --resume
    and `tfgen run <run>/config.toml` read it)."""
    from tfgen.rundir import CONFIG_NAME, write_config

    text = "line\nbreak\r\ttab \x00 nul \x1b[31m esc \x7f del \"q\" \\ 'single' \u2028 漢"
    config, out = tiny(tmp_path, idx_folder, **{"[data]": f"description = {toml_str(text)}\n\n[data]"})
    cfg = load_config(config)
    assert cfg.experiment.description == text
    run_dir = tmp_path / "written"
    run_dir.mkdir()
    write_config(run_dir, cfg)
    result = run_cli("validate", str(run_dir / CONFIG_NAME))
    assert result.returncode == 0, result.stderr
    assert to_dict(load_config(run_dir / CONFIG_NAME)) == to_dict(cfg)


def test_text_that_cannot_be_written_is_refused_at_load(tmp_path, idx_folder):
    """Undecodable bytes in a --set argument arrive as lone surrogates: refused, not written."""
    config, out = tiny(tmp_path, idx_folder)
    before = digest(tmp_path)
    result = run_cli("run", str(config), "--quiet", "--set", "experiment.description=a\udcffb")
    refused(result, str(config), "experiment.description", "not valid Unicode text")
    assert digest(tmp_path) == before


# --------------------------------------------------------------------------- 5. data files

def idx_copy(idx_folder: Path, dest: Path) -> Path:
    dest.mkdir()
    for p in idx_folder.iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    return dest


def _cut_gzip(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _not_gzip(path: Path) -> None:
    path.write_bytes(b"this is not gzip data, whatever its name says\n" * 20)


def _gzip_of_garbage(path: Path) -> None:
    path.write_bytes(gzip.compress(b"\x01\x02\x03\x04" * 100))


def _flipped_gzip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 40):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _cut_idx_body(path: Path) -> None:
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-100]))


def _cut_idx_header(path: Path) -> None:
    path.write_bytes(gzip.compress(bytes([0, 0, 0x08, 3, 0, 0])))


def _float_idx_out_of_range(path: Path) -> None:
    values = np.full((160, 28, 28), 3.5, ">f4")
    header = bytes([0, 0, 0x0D, 3]) + np.array(values.shape, ">u4").tobytes()
    path.write_bytes(gzip.compress(header + values.tobytes()))


def _flat_idx_images(path: Path) -> None:
    write_idx(path, np.zeros((160, 784), np.uint8))


def _a_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


IDX_FAULTS = [
    # (case, which file, damage, message parts)
    ("truncated gzip", "train-images-idx3-ubyte.gz", _cut_gzip, ["cut short", "re-download"]),
    ("not gzip", "train-images-idx3-ubyte.gz", _not_gzip, ["not a valid gzip file", "re-download"]),
    ("corrupt gzip body", "train-images-idx3-ubyte.gz", _flipped_gzip_bytes, ["re-download"]),
    ("gzip of non-IDX", "train-images-idx3-ubyte.gz", _gzip_of_garbage, ["not an IDX file"]),
    ("truncated IDX body", "train-images-idx3-ubyte.gz", _cut_idx_body, ["IDX header says", "bytes"]),
    ("truncated IDX header", "train-images-idx3-ubyte.gz", _cut_idx_header, ["inside its header"]),
    ("float pixels > 1", "train-images-idx3-ubyte.gz", _float_idx_out_of_range, ["[0, 1]", "3.5"]),
    ("images not [N,H,W]", "train-images-idx3-ubyte.gz", _flat_idx_images, ["shape (160, 784)"]),
    ("truncated labels", "train-labels-idx1-ubyte.gz", _cut_gzip, ["cut short"]),
    ("too few labels", "t10k-labels-idx1-ubyte.gz",
     lambda p: write_idx(p, np.zeros(39, np.uint8)), ["labels have shape (39,) for 40 images"]),
    ("file is a folder", "train-images-idx3-ubyte.gz", _a_directory, ["cannot be read"]),
]


@pytest.mark.parametrize("case,name,damage,parts", IDX_FAULTS, ids=[f[0] for f in IDX_FAULTS])
def test_damaged_idx_files(tmp_path, idx_folder, case, name, damage, parts):
    data = idx_copy(idx_folder, tmp_path / "data")
    damage(data / name)
    config, out = tiny(tmp_path, idx_folder, "idx", data)
    before = digest(tmp_path)
    result = run_cli("run", str(config), "--quiet")
    refused(result, str(config), "data.path", str(data / name), *parts)
    assert digest(tmp_path) == before


def test_truncated_gzip_in_a_real_process(tmp_path, idx_folder):
    """Once as the console script: not 'Aborted.' (click's answer to EOFError), one line."""
    data = idx_copy(idx_folder, tmp_path / "data")
    _cut_gzip(data / "train-images-idx3-ubyte.gz")
    config, out = tiny(tmp_path, idx_folder, "idx", data)
    result = run_process("run", str(config), "--quiet")
    lines = refused(result, str(data / "train-images-idx3-ubyte.gz"), "cut short")
    assert "Aborted" not in lines[0] and not out.exists()


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npz(**arrays):
    def write(path: Path) -> None:
        np.savez(path, **arrays)
    return write


_IMAGES, _LABELS = blob_images(40, size=12)
_FLOATS = _IMAGES / 255.0


def _with(array: np.ndarray, index, value) -> np.ndarray:
    array = array.astype(np.float64 if isinstance(value, float) else array.dtype).copy()
    array[index] = value
    return array


NPZ_FAULTS = [
    ("NaN pixels", _npz(x_train=_with(_FLOATS, (3, 5, 5, 0), math.nan), y_train=_LABELS),
     ["'x_train'", "1 pixel values are NaN or infinite", "image 3", "nan_to_num"]),
    ("inf pixels", _npz(x_train=_with(_FLOATS, (7, 0, 0, 0), math.inf)),
     ["'x_train'", "NaN or infinite", "image 7"]),
    ("floats in 0..255", _npz(train_images=_IMAGES.astype(np.float32)),
     ["'train_images'", "must lie in [0, 1]", "255"]),
    ("negative ints", _npz(x_train=_IMAGES.astype(np.int16) - 1), ["'x_train'", "0..255", "-1"]),
    ("ints above 255", _npz(x_train=_IMAGES.astype(np.int32) * 2), ["0..255", "510"]),
    ("four channels", _npz(x_train=np.repeat(_IMAGES, 4, axis=-1)), ["shape (40, 12, 12, 4)", "C = 1"]),
    ("flat images", _npz(x_train=_IMAGES.reshape(40, -1)), ["shape (40, 144)"]),
    ("labels too short", _npz(x_train=_IMAGES, y_train=_LABELS[:-1]),
     ["'y_train'", "labels have shape (39,) for 40 images"]),
    ("NaN labels", _npz(x_train=_IMAGES, y_train=_with(_LABELS, 0, math.nan)),
     ["'y_train'", "labels must be integers"]),
    ("string pixels", _npz(x_train=np.full((40, 12, 12), "a")), ["pixels of type <U1"]),
    ("not a zip", lambda p: p.write_text("x_train = [1, 2, 3]\n"), ["not an .npz file"]),
    ("truncated zip", lambda p: (_npz(x_train=_IMAGES)(p), p.write_bytes(p.read_bytes()[:300])),
     ["cannot be read"]),
    ("a bare .npy", lambda p: p.write_bytes(_npy_bytes(_IMAGES)), ["one bare array", "numpy.savez"]),
    ("pickled objects", _npz(x_train=np.array([{"a": 1}], dtype=object)), ["cannot be read"]),
    ("no image arrays", _npz(pixels=_IMAGES), ["no arrays named", "x_train"]),
]


@pytest.mark.parametrize("case,write,parts", NPZ_FAULTS, ids=[f[0] for f in NPZ_FAULTS])
def test_bad_npz_files(tmp_path, idx_folder, case, write, parts):
    path = tmp_path / "data.npz"
    write(path)
    config, out = tiny(tmp_path, idx_folder, "npz", path)
    before = digest(tmp_path)
    result = run_cli("run", str(config), "--quiet")
    refused(result, str(config), "data.path", str(path), *parts)
    assert digest(tmp_path) == before


def write_png(path: Path, image: np.ndarray) -> None:
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    tf.io.write_file(str(path), tf.io.encode_png(image))


def image_folder(root: Path, channels: list[int], sizes: list[int] | None = None) -> Path:
    for i, c in enumerate(channels):
        size = sizes[i] if sizes else 12
        image = blob_images(1, size=size, channels=3, seed=i)[0][0]
        if c == 1:
            image = image[..., :1]
        elif c == 4:
            image = np.concatenate([image, np.full((size, size, 1), 200, np.uint8)], axis=-1)
        write_png(root / "train" / f"{i}.png", image)
    return root


IMAGE_FAULTS = [
    ("sizes differ", lambda root: image_folder(root, [1, 1, 1], [12, 12, 16]),
     ["images differ in size", "0.png is 12x12", "2.png is 16x16", "set data.resize"]),
    ("sizes and channels differ", lambda root: image_folder(root, [1, 3, 4], [12, 16, 12]),
     ["images differ in size", "1.png is 16x16", "set data.resize"]),
    ("truncated png", lambda root: (image_folder(root, [3, 3]), (root / "train" / "1.png").write_bytes(
        (root / "train" / "1.png").read_bytes()[:40])), ["1.png", "cannot be decoded", "replace or remove"]),
    ("text named .png", lambda root: (image_folder(root, [3]), (root / "train" / "x.png").write_text("hi")),
     ["x.png", "Unknown image file format"]),
]


@pytest.mark.parametrize("case,make,parts", IMAGE_FAULTS, ids=[f[0] for f in IMAGE_FAULTS])
def test_bad_image_folders(tmp_path, idx_folder, case, make, parts):
    root = tmp_path / "images"
    make(root)
    config, out = tiny(tmp_path, idx_folder, "image_folder", root)
    before = digest(tmp_path)
    result = run_cli("run", str(config), "--quiet")
    refused(result, str(config), "data.path", *parts)
    assert digest(tmp_path) == before


@pytest.mark.parametrize("color,channels", [("grayscale", 1), ("keep", 3), ("rgb", 3)])
def test_mixed_grey_rgb_rgba_folders_are_read(tmp_path, color, channels):
    """Not a fault: grey, RGB and RGBA images in one folder are brought to one channel count."""
    from tfgen.config import DataConfig
    from tfgen.data import load_data

    root = image_folder(tmp_path / "images", [1, 3, 4, 1])
    data = load_data(DataConfig(source="image_folder", path=str(root), train_split="train",
                                val_split="", test_split="", color=color), seed=0)
    assert data.image_shape == (12, 12, channels) and len(data.train) == 4
    grey = blob_images(1, size=12, channels=3, seed=0)[0][0, ..., 0] / 255.0
    np.testing.assert_allclose(data.train.images[0, ..., 0], grey, atol=1e-6)  # grey stays grey


# --------------------------------------------------------------------------- 5. TFDS names

TFDS_NAMES = ["mnist:::3", "../x", "a/b/c/d", "", "  ", "/abs", "mnist/", "a b", "é",
              "mnist/no_such_config", "mnist:99.0.0", "mnist/k=v", "x:y", "mnsit"]


@pytest.mark.parametrize("name", TFDS_NAMES, ids=[n or "empty" for n in TFDS_NAMES])
def test_tfds_names_tfds_cannot_use(tmp_path, idx_folder, name):
    config, out = tiny(tmp_path, idx_folder, **{
        'source = "idx"': f'source = "tfds"\nname = {toml_str(name)}\n'
                          f'data_dir = "{tmp_path / "tfds"}"'})
    before = digest(tmp_path)
    result = run_cli("run", str(config), "--quiet")
    refused(result, str(config), "data.name", f"given {name!r}", "tfds.list_builders()")
    assert digest(tmp_path) == before


# --------------------------------------------------------------------------- 7c. all errors

MANY_ERRORS = """
[experiment]
name = "../up"
seed = -1
colour = "red"

[data]
binarize = "dynamc"

[model.prior]
dim = "two"

[model.decoder]
name = "mlp"
hidden = [32, "x", 8.5]

[model.likelihood]
name = "bernouli"

[inference]
scheme = "vea"

[train]
epochs = 2
learning_rate = -1.0
early_stopping = 3

[logging]
num_images = 10000

[[evaluate]]
task = "elbo"
splitt = "test"

[[evaluate]]
task = "samplez"
"""
MANY_KEYS = ["experiment.colour", "experiment.name", "experiment.seed", "data.binarize",
             "model.prior.dim", "model.decoder.hidden[1]", "model.decoder.hidden[2]",
             "model.likelihood.name", "inference.scheme", "train.learning_rate",
             "train.early_stopping", "logging.num_images", "evaluate[0].splitt", "evaluate[1].task"]


def test_validate_lists_every_error_of_a_file(tmp_path):
    config = tmp_path / "many.toml"
    config.write_text(MANY_ERRORS)
    lines = refused(run_cli("validate", str(config)), lines=len(MANY_KEYS))
    prefix = f"error: {config}: "
    assert all(line.startswith(prefix) for line in lines)
    assert sorted(line[len(prefix):].split(": ")[0] for line in lines) == sorted(MANY_KEYS)
    for hint in ["'dynamic'", "'bernoulli'", "'vae'", "'split'", "'samples'"]:
        assert f"did you mean {hint}" in "".join(lines), hint


def test_validate_lists_every_cross_section_error(tmp_path):
    config = tmp_path / "cross.toml"
    config.write_text('[data]\nbinarize = "none"\nval_split = ""\n[model.likelihood]\n'
                      'name = "bernoulli"\n[inference.encoder]\nname = "conv_encoder"\n'
                      'kernels = [3]\n[[evaluate]]\ntask = "complete"\nsplit = "val"\n')
    lines = refused(run_cli("validate", str(config)), lines=3)
    for key in ["data.binarize", "inference.encoder.kernels", "evaluate[0].split"]:
        assert any(f"{config}: {key}: " in line for line in lines), key


def test_validate_reports_each_file_and_overrides(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[train]\nepochz = 3\n[data]\nbinarize = "static"\n')
    good = tmp_path / "good.toml"
    good.write_text('[data]\nbinarize = "static"\n')
    result = run_cli("validate", str(bad), str(good), "--set", "train.batch_size=0")
    lines = refused(result, lines=3)
    assert sum(str(bad) in line for line in lines) == 2 and sum(str(good) in line for line in lines) == 1
    assert "train.epochz" in result.stderr and result.stderr.count("train.batch_size") == 2
    assert "ok:" not in result.stdout


def test_run_also_refuses_with_every_error_and_writes_nothing(tmp_path):
    config = tmp_path / "many.toml"
    config.write_text(MANY_ERRORS)
    out = tmp_path / "runs"
    before = digest(tmp_path)
    result = run_cli("run", str(config), "--quiet", "--set", f"experiment.output_dir={out}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(MANY_KEYS) and all(str(config) in line for line in lines)
    assert digest(tmp_path) == before


def test_many_errors_are_one_config_error():
    """Callers that catch ConfigError keep working; a single error stays a plain ConfigError."""
    with pytest.raises(ConfigErrors) as many:
        from_dict({"train": {"epochs": -1, "batch_size": 0}, "data": {"binarize": "static"}}, "f")
    assert isinstance(many.value, ConfigError) and many.value.key == "train.epochs"
    assert [e.key for e in many.value.errors] == ["train.epochs", "train.batch_size"]
    assert str(many.value).count("\n") == 1
    with pytest.raises(ConfigError) as one:
        from_dict({"train": {"epochs": -1}, "data": {"binarize": "static"}}, "f")
    assert type(one.value) is ConfigError and one.value.key == "train.epochs"


# --------------------------------------------------------------------------- kills inside a save

@pytest.mark.parametrize("stage", ["staged", "data-moved", "files-moved", "committed"])
def test_a_kill_inside_a_save_leaves_an_intact_checkpoint(tmp_path, idx_folder, straight,
                                                          monkeypatch, stage):
    """SIGKILL of a real run while it saves ckpt-4, at each point of the save: the state file
    still names an intact checkpoint, and the resume reaches the uninterrupted run's numbers."""
    out = tmp_path / "runs"
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config(idx_folder, out, epochs=3))
    monkeypatch.setenv(KILL_HOOK, f"{stage}@checkpoints/ckpt-4")
    killed = run_process("run", str(config), "--quiet", *STEPS)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    monkeypatch.delenv(KILL_HOOK)
    run_dir = only_run_dir(out)
    latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    assert latest.endswith("ckpt-4" if stage == "committed" else "ckpt-2")
    assert readable(latest)
    result = resume(run_dir)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""  # nothing damaged: no warning
    assert_same_as_straight(run_dir, straight)
    leftovers = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert leftovers == ["best", "checkpoint", "ckpt-4.data-00000-of-00001", "ckpt-4.index",
                         "ckpt-6.data-00000-of-00001", "ckpt-6.index"]


# --------------------------------------------------------------------------- damaged checkpoints

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = [  # (case, file, damage, the file the warning names, the checkpoint resumed from)
    ("truncated data", "ckpt-4.data-00000-of-00001", _truncate, "ckpt-4.data-00000-of-00001",
     "ckpt-2"),
    ("flipped data byte", "ckpt-4.data-00000-of-00001", _flip_a_byte,
     "ckpt-4.data-00000-of-00001", "ckpt-2"),
    ("deleted index", "ckpt-4.index", Path.unlink, "ckpt-4.index is missing", "ckpt-2"),
    ("truncated index", "ckpt-4.index", _truncate, "ckpt-4.index", "ckpt-2"),
    ("garbage state file", "checkpoint", lambda p: p.write_text("garbage\n"),
     "checkpoints/checkpoint is damaged", "ckpt-4"),
    ("deleted state file", "checkpoint", Path.unlink, "checkpoints/checkpoint is missing",
     "ckpt-4"),
]


@pytest.mark.parametrize("case,name,damage,named,used", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_checkpoint_is_named_and_passed_over(run_dir, straight, case, name, damage,
                                                       named, used):
    damage(run_dir / "checkpoints" / name)
    result = resume(run_dir, "train.epochs=3")
    assert result.returncode == 0, result.stderr
    line = one_line(result.stderr, prefix="warning: ")
    assert named in line and f"resumed from the newest intact checkpoint, " in line
    assert re.search(rf"checkpoints/{used} \(step {used[5:]}, after epoch", line), line
    assert_same_as_straight(run_dir, straight)


def test_when_every_checkpoint_is_damaged_the_resume_is_refused_unchanged(run_dir):
    for name in ["ckpt-2.data-00000-of-00001", "ckpt-4.data-00000-of-00001"]:
        _truncate(run_dir / "checkpoints" / name)
    before = digest(run_dir)
    result = resume(run_dir, "train.epochs=3")
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "no checkpoint can be read" in line
    assert "ckpt-4.data-00000-of-00001 is damaged" in line
    assert "ckpt-2.data-00000-of-00001 is damaged" in line
    assert digest(run_dir) == before


def test_a_run_without_a_checkpoint_is_refused_unchanged(run_dir):
    shutil.rmtree(run_dir / "checkpoints")
    before = digest(run_dir)
    result = resume(run_dir)
    assert result.returncode == 2
    assert "has no checkpoint to resume from" in one_line(result.stderr)
    assert digest(run_dir) == before


# --------------------------------------------------------------------------- changed settings

@pytest.mark.parametrize("change", ['train.optimizer="sgd"'])
def test_a_change_that_does_not_fit_is_refused_and_changes_nothing(run_dir, change):
    before = digest(run_dir)
    result = resume(run_dir, change, "train.epochs=3")
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "does not fit the config" in line and "ckpt-4" in line
    assert digest(run_dir) == before  # config.toml and run.json included
    # so a plain resume still works
    assert resume(run_dir, "train.epochs=3").returncode == 0


FIXED = [  # (kind, --set, the key named, the run's value, the asked value)
    ("scheme", 'inference.scheme="svi"', "inference.scheme", "'vae'", "'svi'"),
    ("likelihood", 'model.likelihood.name="normal"', "model.likelihood.name", "'bernoulli'",
     "'normal'"),
    ("decoder", 'model.decoder.name="conv_decoder"', "model.decoder.name", "'mlp'",
     "'conv_decoder'"),
    ("decoder width", "model.decoder.hidden=[16]", "model.decoder.hidden", "[32]", "[16]"),
    ("encoder width", "inference.encoder.hidden=[8]", "inference.encoder.hidden", "[32]", "[8]"),
    ("latent dimension", "model.prior.dim=8", "model.prior.dim", "2", "8"),
    ("prior", 'model.prior.name="vamp"', "model.prior.name", "'standard_normal'", "'vamp'"),
    ("image size", "data.resize=32", "data.resize", "0", "32"),
    ("image color", 'data.color="rgb"', "data.color", "'keep'", "'rgb'"),
]


@pytest.mark.parametrize("kind,change,key,was,asked", FIXED, ids=[f[0] for f in FIXED])
def test_a_change_of_what_the_run_was_trained_as_is_refused_by_name(run_dir, kind, change, key,
                                                                    was, asked):
    """Named as the change it is, with the run directory, --set and both values; not as what
    the change breaks (another scheme's unknown keys, a checkpoint that does not fit)."""
    before = digest(run_dir)
    result = resume(run_dir, change, "train.epochs=3")
    line = refused(result)[0]
    assert line.startswith(f"error: {run_dir}: --set {key}: cannot change on resume (the run "
                           f"is {was}, --set asked for {asked}); allowed: the run's {was}"), line
    assert digest(run_dir) == before


def test_a_table_replaced_by_set_that_changes_a_network_is_refused_by_name(run_dir):
    """--set of a whole table drops a key the run has to its default ([64] hidden units,
    not the run's [32]): caught once the defaults are filled in."""
    before = digest(run_dir)
    result = resume(run_dir, 'model.decoder={name = "mlp"}')
    line = refused(result)[0]
    assert f"{run_dir}: --set model.decoder.hidden: cannot change on resume (the run is [32]" in line
    assert digest(run_dir) == before


def test_every_change_that_cannot_apply_is_listed(run_dir):
    before = digest(run_dir)
    result = resume(run_dir, 'inference.scheme="svi"', "model.prior.dim=8", "train.epochs=3")
    lines = refused(result, lines=2)
    assert "--set inference.scheme: cannot change on resume" in lines[0]
    assert "--set model.prior.dim: cannot change on resume" in lines[1]
    assert digest(run_dir) == before


def test_data_of_another_image_shape_are_refused_on_resume(run_dir, tmp_path):
    """--set data.path to 32 x 32 images: the run's own data are loaded to compare shapes."""
    folder = tmp_path / "idx32"
    folder.mkdir()
    for prefix, n in [("train", 160), ("t10k", 40)]:
        images, labels = blob_images(n, size=32)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images[..., 0])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    before = digest(run_dir)
    result = resume(run_dir, f"data.path={toml_str(str(folder))}")
    line = refused(result)[0]
    assert line.startswith(f"error: {run_dir}: --set data.path: the image shape cannot change "
                           f"on resume (the run's images are 28x28x1, --set gives 32x32x1)"), line
    assert digest(run_dir) == before


def test_a_bad_value_on_resume_names_the_command_line_not_the_runs_file(run_dir):
    before = digest(run_dir)
    result = resume(run_dir, "train.epochs=x", "train.learning_rate=0")
    lines = refused(result, lines=2)
    assert f"error: {run_dir}: --set train.epochs: expected an integer; given 'x'" in lines
    assert (f"error: {run_dir}: --set train.learning_rate: out of range; given 0; allowed: > 0.0"
            in lines)
    assert "config.toml" not in result.stderr
    assert digest(run_dir) == before


def test_eval_set_and_task_errors_name_the_options(run_dir):
    """tfgen eval: a bad --set value and an unknown --task name the option, not the run's
    config.toml (tfgen complete's mechanism); nothing changes."""
    before = digest(run_dir)
    result = run_cli("eval", str(run_dir), "--task", "log_likelihood", "--set", "samples=0")
    line = refused(result)[0]
    assert line == "error: tfgen eval: --set samples: out of range; given 0; allowed: >= 1 and <= 100000"
    result = run_cli("eval", str(run_dir), "--task", "elbo", "--task", "log_likelihod")
    line = refused(result)[0]
    assert line.startswith("error: tfgen eval: --task: unknown evaluation task (did you mean "
                           "'log_likelihood'?); given 'log_likelihod'"), line
    assert digest(run_dir) == before


@pytest.mark.parametrize("batch_size", [16, 128])
def test_a_new_batch_size_applies_from_the_next_epoch_and_drops_nothing(run_dir, batch_size):
    """After 2 epochs of 2 x 32 images: 2 more epochs of min(2 x batch_size, 128) images."""
    result = resume(run_dir, f"train.batch_size={batch_size}", "train.epochs=4")
    assert result.returncode == 0, result.stderr
    got = metrics(run_dir)
    epoch_images = min(2 * batch_size, 128)
    assert [h["epoch"] for h in got["history"]] == [1, 2, 3, 4]
    assert got["train"]["images_seen"] == 2 * 64 + 2 * epoch_images
    assert got["train"]["steps"] == 4 + 2 * math.ceil(epoch_images / batch_size)
    assert got["status"] == "completed"


def _popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tfgen", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _wait_for(proc: subprocess.Popen, text: str, seen: list[str]) -> None:
    for line in proc.stderr:
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"{text!r} never came: {''.join(seen)}")


# quick epochs: no validation, no checkpoint at their ends, a best checkpoint after the first only
FAST = ("--set", 'data.val_split=""', "--set", "train.checkpoint_every_epochs=1000",
        "--set", "train.early_stopping.min_delta=1e9",
        "--set", "logging.every_steps=100000", "--set", "logging.images_every_steps=100000")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_new_batch_size_mid_epoch_finishes_that_epoch_by_images(tmp_path, idx_folder):
    """Ctrl-C in the middle of epoch 3 of batch size 1 (sent by the run itself after step
    2 x 128 + 37, so the moment does not depend on the machine's speed), resumed with batch
    size 5: the epoch is finished from the same image, and every epoch counts 128 images."""
    out = tmp_path / "runs"
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config(idx_folder, out, epochs=500))
    interrupt_after = 2 * 128 + 37
    proc = subprocess.Popen([sys.executable, "-m", "tfgen", "run", str(config),
                             "--set", "train.batch_size=1", *FAST], cwd=REPO, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO),
                                 TEST_HOOK: str(interrupt_after)})
    _, rest = proc.communicate(timeout=300)
    assert proc.returncode == 130, rest
    assert f"interrupted by Ctrl-C at step {interrupt_after}, epoch 3 at image 37 of 128" in rest, rest
    assert "Traceback" not in rest
    run_dir = only_run_dir(out)
    assert int(checkpoint_value(run_dir, "epoch")) == 2
    assert int(checkpoint_value(run_dir, "images_in_epoch")) == 37
    assert int(checkpoint_value(run_dir, "step")) == interrupt_after
    result = resume(run_dir, "train.batch_size=5", "train.epochs=4")
    assert result.returncode == 0, result.stderr
    got = metrics(run_dir)
    assert [h["epoch"] for h in got["history"]] == [1, 2, 3, 4]
    assert got["train"]["images_seen"] == 4 * 128
    assert got["train"]["steps"] == interrupt_after + math.ceil((128 - 37) / 5) + math.ceil(128 / 5)


# --------------------------------------------------------------------------- memory

def _pga(tmp_path: Path, idx_folder: Path, extra: str = "") -> Path:
    text = tiny_config(idx_folder, tmp_path / "runs", epochs=1)
    text = text.replace('scheme = "vae"', 'scheme = "pga"\nparticles = 2')
    text = text.replace('[inference.encoder]\nname = "mlp"\nhidden = [32]\n', "")
    text = text.replace('val_split = "train[128:]"', 'val_split = ""')
    text = text[: text.index("[[evaluate]]")] + '[[evaluate]]\ntask = "samples"\nnum_images = 8\n'
    config = tmp_path / "pga.toml"
    config.write_text(text + extra)
    return config


BOMBS = [  # (case, scheme, --set, the keys the message must name)
    ("particles", "pga", ["inference.particles=100000", "train.batch_size=128"],
     ["inference.particles (100000)", "train.batch_size (128)"]),
    ("particles and chunk", "pga", ["inference.particles=100000", "train.batch_size=1",
                                    "inference.chunk_size=128"],
     ["inference.chunk_size (128)", "inference.particles (100000)"]),
    # importance samples are drawn in chunks (K costs no more memory than one chunk); the
    # chains of annealed importance sampling run at once, with gradients
    ("ais chains", "vae", ['evaluate.1.estimator="ais"', "evaluate.1.ais_chains=10000",
                           "evaluate.1.batch_size=1000"],
     ["evaluate.1.batch_size (1000)", "evaluate.1.ais_chains (10000)"]),
    # a mixture prior's log density holds [batch, components, d] terms
    ("mixture prior", "vae", ['model.prior.name="gaussian_mixture"', "model.prior.components=10000",
                              "model.prior.dim=4096"], ["model.prior (gaussian_mixture)"]),
    # generated images are held, and decoded in batches of batch_size, whatever the splits hold
    ("generated images", "vae", ["model.decoder.hidden=[4096]", 'evaluate=[{task="sample_quality",'
                                 'num_samples=1000000,batch_size=1000000,max_reference=64}]'],
     ["evaluate.0.batch_size (1000000)", "evaluate.0.num_samples (1000000)"]),
    # the networks of schemes that are their own density (coupling networks, PixelCNN)
    ("flow networks", "flow", ["inference.hidden=[16384,16384]", "inference.coupling_layers=16"],
     ["inference.hidden ([16384, 16384])", "inference.coupling_layers (16)"]),
    ("pixelcnn filters", "autoregressive", ["inference.num_filters=1024"],
     ["train.batch_size (32)"]),
]

DENSITY_SCHEMES = {  # a tiny config's [inference] and [model.likelihood] for these schemes
    "flow": ('[inference]\nscheme = "flow"\n', 'name = "normal"', 'binarize = "none"'),
    "autoregressive": ('[inference]\nscheme = "autoregressive"\nlevels = 2\n',
                       'name = "bernoulli"', 'binarize = "dynamic"'),
}


def _density_config(tmp_path, idx_folder, scheme: str) -> Path:
    inference, likelihood, binarize = DENSITY_SCHEMES[scheme]
    text = tiny_config(idx_folder, tmp_path / "runs")
    text = text.replace('[inference]\nscheme = "vae"\n\n[inference.encoder]\nname = "mlp"\n'
                        'hidden = [32]\n', inference)
    text = text.replace('name = "bernoulli"', likelihood).replace('binarize = "dynamic"', binarize)
    text = text[: text.index("[[evaluate]]")] + '[[evaluate]]\ntask = "samples"\nnum_images = 4\n'
    config = tmp_path / f"{scheme}.toml"
    config.write_text(text)
    return config


def test_data_that_cannot_fit_are_refused_before_they_are_converted(tmp_path, idx_folder):
    """data.resize = 20000 on 28 x 28 digits: ~200 GB of float32 images; refused from the
    selection's size, not by the data loader running out of memory."""
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config(idx_folder, tmp_path / "runs"))
    result = run_cli("run", str(config), "--quiet", "--set", "data.resize=20000")
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert re.search(r"the data need about [\d.]+ [GT]iB of memory", line), line
    assert "20000x20000x1" in line and "data.resize" in line and "--no-memory-check" in line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("case,scheme,sets,keys", BOMBS, ids=[b[0] for b in BOMBS])
def test_a_configuration_that_cannot_fit_is_refused_before_anything_exists(
        tmp_path, idx_folder, case, scheme, sets, keys):
    if scheme == "pga":
        config = _pga(tmp_path, idx_folder)
    elif scheme in DENSITY_SCHEMES:
        config = _density_config(tmp_path, idx_folder, scheme)
    else:
        config = tmp_path / "tiny.toml"
        config.write_text(tiny_config(idx_folder, tmp_path / "runs"))
    result = run_cli("run", str(config), "--quiet", *[a for s in sets for a in ("--set", s)])
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert re.search(r"needs about [\d.]+ [GT]iB of memory", line), line
    assert re.search(r"but [\d.]+ [GMT]iB is available", line), line
    for key in keys:
        assert key in line, (key, line)
    assert "--no-memory-check" in line
    assert not (tmp_path / "runs").exists()  # no run directory, nothing allocated


def test_eval_refuses_tasks_that_cannot_fit_and_changes_nothing(run_dir):
    """tfgen eval estimates its tasks' memory as tfgen run does, before the run changes."""
    before = digest(run_dir)
    result = run_cli("eval", str(run_dir), "--task", "log_likelihood", "--set", 'estimator="ais"',
                     "--set", "ais_chains=10000", "--set", "batch_size=1000")
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert re.search(r"needs about [\d.]+ [GT]iB of memory", line), line
    assert "--no-memory-check" in line and "Traceback" not in result.stderr
    assert digest(run_dir) == before


def test_an_address_space_limit_is_counted_and_named(run_dir, monkeypatch):
    """ulimit -v (RLIMIT_AS): the room is the soft limit minus the process's virtual size, plus
    what it holds; when that is the tightest figure, it is the one the refusal names (tfgen
    eval's check here).  The process's figures are fixed, so the arithmetic is exact."""
    import resource

    from tfgen import memory

    kib = {"MemAvailable": 64 * 2**20, "VmRSS": 512 * 2**10, "VmSize": 3 * 2**20}  # KiB
    monkeypatch.setattr(memory, "_meminfo_kib", lambda path, key: kib[key])
    monkeypatch.setattr(memory, "_cgroup_limits", lambda: [])
    real = resource.getrlimit
    limit = (kib["VmSize"] + 64 * 2**10) * 1024  # 64 MiB of address space left

    def getrlimit(which):
        return (limit, resource.RLIM_INFINITY) if which == resource.RLIMIT_AS else real(which)

    monkeypatch.setattr(memory.resource, "getrlimit", getrlimit)
    assert memory.available_memory() == memory.Available(
        (64 + 512) * 2**20, f"the address-space limit, ulimit -v {limit // 1024}")
    before = digest(run_dir)
    result = run_cli("eval", str(run_dir), "--task", "log_likelihood", "--set", "samples=100000",
                     "--set", "batch_size=1000", "--set", "max_images=0")
    line = one_line(result.stderr)
    assert result.returncode == 2, line
    assert f"but 576 MiB is available (the address-space limit, ulimit -v {limit // 1024})" in line
    assert digest(run_dir) == before
    # no limit: the other figures decide
    limit = resource.RLIM_INFINITY
    assert memory.available_memory() == memory.Available((64 * 2**20 + 512 * 2**10) * 1024,
                                                               "MemAvailable")


def test_the_estimate_is_near_the_measured_peak(tmp_path, idx_folder):
    """A PGA run whose particle activations (128 x 200 particles) are about a third of its
    memory: the estimate it prints against its peak RSS, measured by a parent process."""
    config = _pga(tmp_path, idx_folder)
    measure = ("import resource, subprocess, sys\n"
               "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
               "sys.stderr.write(r.stderr)\n"
               "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    proc = subprocess.run([sys.executable, "-c", measure, sys.executable, "-m", "tfgen", "run",
                           str(config), "--set", "inference.particles=200",
                           "--set", "train.batch_size=128", "--set", 'train.compile="graph"'],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    code, peak_kib = map(int, proc.stdout.split())
    assert code == 0, proc.stderr
    match = re.search(r"memory: about ([\d.]+) (MiB|GiB) estimated", proc.stderr)
    assert match, proc.stderr
    estimate = float(match.group(1)) * (2**20 if match.group(2) == "MiB" else 2**30)
    assert 1 / 1.5 < estimate / (peak_kib * 1024) < 1.5, (estimate, peak_kib)


# --------------------------------------------------------------------------- TensorFlow errors

def _poison_the_train_step(monkeypatch) -> None:
    """A real TensorFlow runtime error inside the compiled step (check_numerics on a NaN)."""
    from tfgen.inference.vae import VAE

    step = VAE.step_on_replica

    def poisoned(self, images, indices, batch):
        out = step(self, images, indices, batch)
        out["loss"] = tf.debugging.check_numerics(out["loss"] * np.nan, "poisoned step")
        return out

    monkeypatch.setattr(VAE, "step_on_replica", poisoned)


def test_a_tensorflow_error_in_training_is_one_line_naming_the_run(tmp_path, idx_folder,
                                                                   monkeypatch):
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config(idx_folder, tmp_path / "runs"))
    _poison_the_train_step(monkeypatch)
    result = run_cli("run", str(config), "--quiet")
    assert result.returncode == 1
    line = one_line(result.stderr)
    run_dir = only_run_dir(tmp_path / "runs")
    assert str(run_dir) in line
    assert "InvalidArgumentError" in line and "poisoned step" in line
    assert "during training after step 0" in line
    assert metrics(run_dir)["status"].startswith("failed: ")


def test_debug_shows_the_traceback(tmp_path, idx_folder, monkeypatch):
    from tfgen.errors import RunFailed

    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config(idx_folder, tmp_path / "runs"))
    _poison_the_train_step(monkeypatch)
    with pytest.raises(RunFailed) as raised:  # run_cli re-raises what the CLI lets through
        run_cli("run", str(config), "--quiet", "--debug")
    assert isinstance(raised.value.__cause__, tf.errors.InvalidArgumentError)


def test_running_out_of_memory_in_evaluation_is_one_line(run_dir, monkeypatch):
    import tfgen.runner

    def out_of_memory(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(
            None, None, "Graph execution error:\n\nOOM when allocating tensor with "
                        "shape[100000,64,32,32] and type float on /job:localhost/replica:0/"
                        "task:0/device:CPU:0 by allocator cpu\n\t [[{{node conv2d}}]]")

    monkeypatch.setattr(tfgen.runner, "evaluate", out_of_memory)
    result = resume(run_dir)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "TensorFlow ran out of memory" in line and "shape[100000,64,32,32]" in line
    assert "during evaluation" in line and str(run_dir) in line
    assert metrics(run_dir)["status"].startswith("failed: ")


# --------------------------------------------------------------------------- --resume paths

def test_resume_of_the_name_folder_lists_its_runs(finished):
    name_folder = finished.parent
    result = resume(name_folder)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert "is a folder of runs, not a run directory" in line
    assert f"runs inside: {finished.name}" in line
    assert f"--resume {finished}" in line


@pytest.mark.parametrize("where,expected", [
    ("missing", "does not exist"),
    ("output", "is an output folder, not a run directory; experiments inside: tiny"),
    ("file", "is a file, not a run directory"),
    ("empty", "is not a run directory (it has no config.toml)"),
])
def test_resume_says_what_a_path_is_instead(finished, tmp_path, where, expected):
    path = {"missing": tmp_path / "missing", "output": finished.parent.parent,
            "file": finished / "metrics.json", "empty": tmp_path}[where]
    result = resume(path)
    assert result.returncode == 2
    assert expected in one_line(result.stderr)


# --------------------------------------------------------------------------- stop signals

SIGNALS = [("SIGINT", "Ctrl-C", 130), ("SIGTERM", "SIGTERM", 143), ("SIGUSR1", "SIGUSR1", 138)]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signame,said,code", SIGNALS, ids=[s[0] for s in SIGNALS])
def test_a_stop_signal_mid_epoch_checkpoints_and_the_resume_is_exact(tmp_path, idx_folder,
                                                                    straight, monkeypatch,
                                                                    signame, said, code):
    """Ctrl-C, or a scheduler's SIGTERM or SIGUSR1, after step 3 (epoch 2 at image 32 of 64,
    sent by the run itself): the step finishes, a checkpoint is written, the exit code is
    128 + the signal's number, one line says so at once and one names the checkpoint and the
    resume; the resumed run ends where the uninterrupted one does."""
    out = tmp_path / "runs"
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config(idx_folder, out, epochs=3))
    monkeypatch.setenv(TEST_HOOK, f"3:{signame}")
    stopped = run_process("run", str(config), "--quiet", *STEPS)
    monkeypatch.delenv(TEST_HOOK)
    assert stopped.returncode == code, stopped.stderr
    run_dir = only_run_dir(out)
    again = "Ctrl-C again to stop" if signame == "SIGINT" else "a second signal stops"
    assert stopped.stderr.splitlines() == [
        f"{said}: stopping after this step with a checkpoint ({again} at once, without one)",
        f"error: interrupted by {said} at step 3, epoch 2 at image 32 of 64; checkpoint "
        f"{run_dir}/checkpoints/ckpt-3; continue with: tfgen run --resume {run_dir}"]
    assert int(checkpoint_value(run_dir, "step")) == 3
    assert metrics(run_dir)["status"].startswith(f"interrupted: interrupted by {said} at step 3")
    result = resume(run_dir)
    assert result.returncode == 0, result.stderr
    assert_same_as_straight(run_dir, straight)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_signal_in_evaluation_keeps_the_finished_tasks_and_tfgen_eval_does_the_rest(
        tmp_path, idx_folder, finished, monkeypatch):
    """SIGTERM as the run's third evaluation task starts: exit 143, the two tasks before it
    in metrics.json.  ``tfgen eval RUN_DIR`` stopped by SIGTERM at the fourth keeps the third;
    the next one runs the last two and completes the run, with the numbers, task list and
    figures of the same run evaluated without a stop (the ``finished`` fixture)."""
    out = tmp_path / "runs"
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config(idx_folder, out, epochs=2))
    monkeypatch.setenv(TEST_HOOK, "evaluate[2]:SIGTERM")
    stopped = run_process("run", str(config), "--quiet", *STEPS)
    assert stopped.returncode == 143, stopped.stderr
    run_dir = only_run_dir(out)
    assert one_line(stopped.stderr) == (
        f"error: interrupted during evaluation by SIGTERM (evaluate[2], task 'reconstructions'); "
        f"2 of 5 tasks finished, their results are in {run_dir}/metrics.json; the trained state "
        f"is in {run_dir}/checkpoints/ckpt-4; finish the evaluation with: tfgen eval {run_dir}")
    got = metrics(run_dir)
    assert got["status"] == "interrupted during evaluation"
    assert [e["task"] for e in got["evaluation_seconds"]] == ["evaluate[0] elbo",
                                                             "evaluate[1] log_likelihood"]
    assert {"test_elbo", "test_log_likelihood"} <= set(got["evaluation"])

    monkeypatch.setenv(TEST_HOOK, "evaluate[3]:SIGTERM")
    stopped = run_process("eval", str(run_dir))
    monkeypatch.delenv(TEST_HOOK)
    assert stopped.returncode == 143, stopped.stderr
    assert one_line(stopped.stderr) == (
        f"error: interrupted by SIGTERM during tfgen eval (stopped at once); the results of the "
        f"tasks it finished are in {run_dir}/metrics.json (evaluation); finish the evaluation "
        f"with: tfgen eval {run_dir}")
    got = metrics(run_dir)
    assert got["status"] == "interrupted during evaluation"
    assert len(got["evaluation_seconds"]) == 3

    result = run_cli("eval", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("evaluate[3] samples: ")
    assert result.stdout.splitlines()[-1] == (
        f"the run's evaluation is complete (2 tasks run now): results in "
        f"{run_dir}/metrics.json (evaluation)")
    got, whole = metrics(run_dir), metrics(finished)
    assert got["status"] == "completed" and "evaluations_after_run" not in got
    assert ([e["task"] for e in got["evaluation_seconds"]]
            == [e["task"] for e in whole["evaluation_seconds"]])
    assert got["evaluation"].keys() == whole["evaluation"].keys()
    for key, value in whole["evaluation"].items():
        if isinstance(value, float):
            assert got["evaluation"][key] == pytest.approx(value, rel=1e-5), key
    assert (sorted(p.name for p in (run_dir / "figures").iterdir())
            == sorted(p.name for p in (finished / "figures").iterdir()))
    # a completed run: tfgen eval is the after-run evaluation again
    assert run_cli("eval", str(run_dir), "--task", "elbo").returncode == 0
    assert "evaluations_after_run" in metrics(run_dir)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_signals_by_phase_never_break_a_save():
    """InterruptFlag with real signals sent to this process: in training the first is a
    request and the second stops at once; while a checkpoint is written both wait for the
    save to end; in evaluation the first stops at once; once stopping, they are ignored."""
    import threading

    from tfgen.signals import InterruptFlag, StopSignal

    assert threading.current_thread() is threading.main_thread()  # where handlers run
    kill = lambda name: os.kill(os.getpid(), getattr(signal, name))

    with InterruptFlag() as flag:
        kill("SIGUSR1")
        assert flag.first == signal.SIGUSR1
        with pytest.raises(StopSignal) as stop:
            kill("SIGTERM")
        assert stop.value.signum == signal.SIGTERM and flag.interrupted_in == "training"

    with InterruptFlag() as flag:
        saved = False
        with pytest.raises(StopSignal) as stop:
            with flag.saving():
                kill("SIGTERM")
                kill("SIGINT")
                saved = True
        assert saved and stop.value.signum == signal.SIGINT and flag.first == signal.SIGTERM
        assert flag.interrupted_in == "training"
        kill("SIGTERM")  # stopping: ignored

    with InterruptFlag() as flag:
        with flag.saving():
            kill("SIGTERM")  # one signal: a request, the save goes on and ends normally
        assert flag.phase == "training" and flag.requested
        with pytest.raises(StopSignal):
            flag.enter("evaluation")  # a pending request stops the evaluation before it starts
        assert flag.interrupted_in == "evaluation"

    with InterruptFlag() as flag:
        flag.enter("evaluation")
        with pytest.raises(StopSignal):
            kill("SIGUSR1")


def test_a_stop_is_raised_in_tfgen_code_not_in_the_library_it_is_in(monkeypatch):
    """A signal handled while TensorFlow's Python code runs raises nothing there (an exception
    in TensorFlow's call-backs can corrupt its heap): it is raised at the next line of tfgen's
    own code (here, this file's), once the library's function has finished."""
    from tfgen import signals

    monkeypatch.setattr(signals, "_OWN_CODE", __file__)
    steps: list[str] = []
    library = {"steps": steps}  # a function whose code is not tfgen's, calling back
    exec(compile("def library_call(callback):\n    callback()\n    steps.append('finished')\n",
                 "<tensorflow>", "exec"), library)
    tracing = sys.gettrace()

    def handler_in_library_code():  # as the handler would be called, in the library's frame
        signals.raise_in_own_code(sys._getframe(1), signal.SIGTERM)

    def own_code():
        library["library_call"](handler_in_library_code)
        steps.append("the next line of tfgen's code")

    with pytest.raises(signals.StopSignal) as stop:
        own_code()
    assert stop.value.signum == signal.SIGTERM
    assert steps == ["finished"]
    assert sys.gettrace() is tracing


def test_a_hard_crash_prints_the_python_stack(tmp_path):
    """faulthandler is on in the console entry: a SIGSEGV names where Python was."""
    script = ("import os, signal, sys\n"
              "from tfgen import cli\n"
              "def crash():\n"
              "    os.kill(os.getpid(), signal.SIGSEGV)\n"
              "cli.app = crash\n"
              "sys.argv = ['tfgen', '--help']\n"
              "cli.main()\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONFAULTHANDLER"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**env, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGSEGV
    assert "Fatal Python error: Segmentation fault" in proc.stderr, proc.stderr
    assert ', line 4 in crash' in proc.stderr, proc.stderr


SECOND = [("SIGINT", "SIGINT", "a second Ctrl-C", 130),
          ("SIGUSR1", "SIGTERM", "SIGTERM after SIGUSR1", 143)]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("first,second,by,code", SECOND, ids=["ctrl-c twice", "usr1 then term"])
def test_a_second_signal_in_training_stops_at_once(tmp_path, idx_folder, first, second, by,
                                                   code):
    out = tmp_path / "runs"
    config = tmp_path / "tiny.toml"
    config.write_text(tiny_config(idx_folder, out, epochs=500))
    # steps of a few ms and a checkpoint of ~40 MB: the second signal lands before the
    # first one's checkpoint is written
    proc = _popen("run", str(config), "--set", "train.batch_size=16", *FAST,
                  "--set", "model.decoder.hidden=[1024, 1024]",
                  "--set", "inference.encoder.hidden=[1024, 1024]")
    seen: list[str] = []
    _wait_for(proc, "epoch 2/500", seen)
    proc.send_signal(getattr(signal, first))
    _wait_for(proc, "stopping after this step", seen)
    proc.send_signal(getattr(signal, second))
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == code, "".join(seen) + rest
    # the second signal mostly lands while the first one's checkpoint is written, which it
    # does not break: the run says so, and stops when the save is done
    *waiting, line = rest.strip().splitlines()
    named = "Ctrl-C" if second == "SIGINT" else second
    assert waiting in ([], [f"{named}: stopping at once when the checkpoint being written is "
                            f"complete"]), rest
    assert line.startswith("error: ") and "Traceback" not in rest
    assert f"interrupted during training by {by} (stopped at once at step " in line
    assert "evaluation" not in line
    assert metrics(only_run_dir(out))["status"] == "interrupted during training"
