"""Checkpoints that a kill cannot break, and a restore that tells a damaged file from a
changed config.

The layout is TensorFlow's own -- ``ckpt-<n>.index``, ``ckpt-<n>.data-<i>-of-<k>`` and the
``checkpoint`` state file that names them, newest last -- so ``tf.train.latest_checkpoint``
and TensorBoard read it.  The writing is not ``tf.train.CheckpointManager``'s: that one
writes a checkpoint's files under their final names and rewrites a checkpoint of the same
number in place, so a kill at the wrong moment leaves the newest checkpoint unreadable.

Saving: the state file is the commit point.

1. the checkpoint is written under ``.saving/`` (names nothing refers to) and fsynced;
2. its files are moved into place, the data files first and the index last;
3. the state file is replaced atomically (a temporary file, then ``os.replace``) so that it
   names the new checkpoint;
4. the checkpoints beyond ``keep``, and any checkpoint files no state names (leftovers of a
   killed save, damaged checkpoints passed over by a resume), are deleted.

A kill before 3 leaves the state file naming the previous checkpoints, which nothing has
touched; a kill after 3, the new one, complete.  A save that fails before 3 (a full disk, a
quota, a read-only or failing disk: a :class:`tfgen.errors.StorageError` naming the checkpoint)
removes what it wrote, which frees its space for the resume, and the state file stays as it was.  A name the state file lists is never
written again: saving the same number twice (a changed state at the same step) takes the
name ``ckpt-<n>_<k>``.

Restoring tries the checkpoints the state file names, newest first (every ``ckpt-*.index``
in the directory when the state file is missing or unreadable).  Every tensor of a
candidate is read first (TensorFlow checks each one's CRC32C), so a truncated, corrupt or
missing file is *damaged* and the next older checkpoint is tried; only an intact checkpoint
is restored into the objects, where a shape or structure mismatch means that the *config*
no longer fits it (:class:`CheckpointMismatch`).

Test hook: with ``TFGEN_TEST_KILL_DURING_SAVE=<stage>@<path suffix>`` the process kills
itself with SIGKILL when saving a checkpoint whose path ends with the suffix, at one of the
stages ``staged`` (written under .saving/), ``data-moved`` (data files in place, not the
index), ``files-moved`` (all files in place, the state file not yet replaced) or
``committed`` (state file replaced, old checkpoints not yet deleted).  tests/test_faults.py
uses it to kill real ``tfgen run`` processes inside a save.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import shutil
import signal
from pathlib import Path

import tensorflow as tf

from tfgen import storage
from tfgen.rundir import atomic_write

STATE_FILE = "checkpoint"
STAGING = ".saving"
KILL_HOOK = "TFGEN_TEST_KILL_DURING_SAVE"

_NAME = r"ckpt-(\d+)(?:_(\d+))?"
_INDEX = re.compile(rf"^({_NAME})\.index$")
_FILE = re.compile(rf"^({_NAME})\.(?:index|data-\d+-of-\d+)$")
_DATA = re.compile(r"\.data-(\d+)-of-(\d+)$")
# the lines of TensorFlow's CheckpointState text proto
_STATE_LINE = re.compile(r'^(model_checkpoint_path|all_model_checkpoint_paths): "([^"\\]+)"$'
                         r'|^(all_model_checkpoint_timestamps|last_preserved_timestamp): '
                         r'[-+0-9.eE]+$')
# what TensorFlow raises when a checkpoint file cannot be read (a truncated data file gives
# IndexError "Read less bytes than requested")
READ_ERRORS = (tf.errors.OpError, IndexError, ValueError, OSError)


class CheckpointMismatch(Exception):
    """An intact checkpoint does not fit the objects built from the config."""

    def __init__(self, path: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.path, self.detail = path, detail


class NoIntactCheckpoint(Exception):
    """Checkpoints exist, but none can be read; ``problems`` names each damaged file."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclasses.dataclass
class Restored:
    path: str  # the checkpoint restored
    problems: list[str]  # damaged files passed over on the way (empty when the newest was intact)


class CheckpointStore:
    """The checkpoints of one ``tf.train.Checkpoint`` in one directory, the newest ``keep``."""

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: Path, keep: int,
                 root: Path | None = None):
        """``root``: the folder ``directory`` is in, at any depth (the run directory; default
        its parent): saving makes the folders between them, never ``root`` itself, so a run
        directory deleted under a run is not made again, half."""
        self.checkpoint, self.directory, self.keep = checkpoint, Path(directory), keep
        self.root = Path(root) if root is not None else self.directory.parent
        # restore() creates the checkpoint's save counter, write() saves it only if it exists:
        # created now, it is in every checkpoint and always matched on restore
        checkpoint.save_counter  # noqa: B018
        self._kept: list[str] | None = None  # names, oldest first, as the state file lists them

    # ------------------------------------------------------------------ reading
    @property
    def state_file(self) -> Path:
        return self.directory / STATE_FILE

    def kept(self) -> list[str]:
        """The checkpoints the state file names, oldest first ([] if it names none or cannot
        be read: saving then starts a new list, and the sweep removes what it does not name)."""
        if self._kept is None:
            names, _ = self._read_state()
            self._kept = names or []
        return self._kept

    @property
    def latest(self) -> str | None:
        kept = self.kept()
        return str(self.directory / kept[-1]) if kept else None

    def _read_state(self) -> tuple[list[str] | None, str | None]:
        """(names oldest first, None), or (None, what is wrong with the state file), or
        (None, None) when there is none."""
        path = self.state_file
        if not path.exists():
            return None, None
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            return None, f"unreadable: {err}"
        latest, names = None, []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line:
                continue
            match = _STATE_LINE.match(line)
            if not match:
                return None, f"line {number} is not a checkpoint entry: {line[:40]!r}"
            key, value = match.group(1), match.group(2)
            if key == "model_checkpoint_path":
                latest = os.path.basename(value)  # a moved run directory keeps its checkpoints
            elif key == "all_model_checkpoint_paths":
                names.append(os.path.basename(value))
        if latest is None:
            return None, "it names no checkpoint"
        names = [n for n in names if n != latest] + [latest]
        return names, None

    def _scan(self) -> list[str]:
        """Every checkpoint with an index file in the directory, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [m.group(1) for p in self.directory.iterdir() if (m := _INDEX.match(p.name))]
        return sorted(found, key=_order)

    def damage(self, name: str) -> str | None:
        """What is wrong with checkpoint ``name``'s files (None if every tensor reads back)."""
        prefix = self.directory / name
        index = Path(f"{prefix}.index")
        if not index.is_file():
            return f"{index} is missing"
        shards = sorted(p for p in self.directory.glob(f"{name}.data-*-of-*")
                        if _FILE.match(p.name))
        if not shards:
            return f"{prefix}.data-00000-of-00001 is missing"
        expected = int(_DATA.search(shards[0].name).group(2))
        present = {int(_DATA.search(p.name).group(1)) for p in shards}
        missing = [i for i in range(expected) if i not in present]
        if missing:
            return f"{prefix}.data-{missing[0]:05d}-of-{expected:05d} is missing"
        try:
            reader = tf.train.load_checkpoint(str(prefix))
            keys = list(reader.get_variable_to_shape_map())
        except READ_ERRORS as err:
            return f"{index} is damaged ({_first_line(err)})"
        try:
            for key in keys:
                reader.get_tensor(key)
        except READ_ERRORS as err:
            where = shards[0] if len(shards) == 1 else f"{prefix}.data-*"
            return f"{where} is damaged ({_first_line(err)})"
        return None

    def restore(self) -> Restored | None:
        """Restore the newest intact checkpoint; None if there is none at all.

        Raises :class:`NoIntactCheckpoint` if every checkpoint is damaged and
        :class:`CheckpointMismatch` if the newest intact one does not fit the objects.
        Writes nothing.
        """
        names, state_problem = self._read_state()
        problems = []
        if names is None:
            names = self._scan()
            if state_problem:
                problems.append(f"{self.state_file} is damaged ({state_problem})")
            elif names:
                problems.append(f"{self.state_file} is missing")
        if not names:
            if problems:
                raise NoIntactCheckpoint(problems)
            return None
        for i in range(len(names) - 1, -1, -1):
            problem = self.damage(names[i])
            if problem is None:
                prefix = str(self.directory / names[i])
                mismatch = None
                try:
                    status = self.checkpoint.restore(prefix)
                    status.assert_existing_objects_matched()
                    # state saved that nothing built today restores (e.g. Adam moments of
                    # latents whose optimizer is now SGD) would be dropped: a changed config
                    status.assert_consumed()
                except (AssertionError, ValueError) as err:
                    mismatch = _first_line(err)
                except READ_ERRORS as err:  # read after all: damaged
                    problem = f"{prefix} is damaged ({_first_line(err)})"
                if mismatch is not None:
                    raise CheckpointMismatch(prefix, mismatch)
            if problem is None:
                self._kept = names[: i + 1]
                return Restored(prefix, problems)
            problems.append(problem)
        raise NoIntactCheckpoint(problems)

    # ------------------------------------------------------------------ writing
    def save(self, number: int) -> str:
        """Write the checkpoint as ``ckpt-<number>`` (see the module docstring); its path."""
        kept = list(self.kept())
        name = f"ckpt-{number}"
        k = 0
        while name in kept:
            k += 1
            name = f"ckpt-{number}_{k}"
        staging = self.directory / STAGING
        with storage.writing(self.directory / name):
            try:
                if not self.root.is_dir():
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT),
                                            str(self.root))
                self.directory.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(staging, ignore_errors=True)  # what a killed save left
                staging.mkdir()
                self.checkpoint.write(str(staging / name))
                staged = sorted((p for p in staging.iterdir() if _FILE.match(p.name)),
                                key=lambda p: p.name.endswith(".index"))  # the index last
                for path in staged:
                    _fsync(path)
                _kill_hook("staged", self.directory / name)
                for path in staged:
                    if path.name.endswith(".index"):
                        _kill_hook("data-moved", self.directory / name)
                    os.replace(path, self.directory / path.name)
                _fsync(self.directory)
                _kill_hook("files-moved", self.directory / name)
                kept = (kept + [name])[-self.keep:]
                self._write_state(kept)
            except BaseException:
                # a failed save (a full disk ...): the state file still names the checkpoints
                # before it, which nothing touched; what it wrote is removed, so that its
                # space is free again for the resume
                self._discard(name)
                raise
        self._kept = kept
        _kill_hook("committed", self.directory / name)
        self._sweep(kept)
        shutil.rmtree(staging, ignore_errors=True)
        return str(self.directory / name)

    def _discard(self, name: str) -> None:
        """Remove what a failed save of ``name`` wrote (never named by the state file)."""
        shutil.rmtree(self.directory / STAGING, ignore_errors=True)
        if name not in self.kept() and self.directory.is_dir():
            for path in self.directory.glob(f"{name}.*"):
                if _FILE.match(path.name):
                    with contextlib.suppress(OSError):
                        path.unlink()

    def _write_state(self, names: list[str]) -> None:
        lines = [f'model_checkpoint_path: "{names[-1]}"']
        lines += [f'all_model_checkpoint_paths: "{n}"' for n in names]
        atomic_write(self.state_file, "\n".join(lines) + "\n")

    def _sweep(self, kept: list[str]) -> None:
        for path in self.directory.iterdir():
            match = _FILE.match(path.name)
            if match and match.group(1) not in kept:
                path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _order(name: str) -> tuple[int, int]:
    match = re.fullmatch(_NAME, name)
    return int(match.group(1)), int(match.group(2) or 0)


def _first_line(err: BaseException) -> str:
    text = getattr(err, "message", None) or str(err)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__)[:200]


def _kill_hook(stage: str, prefix: Path) -> None:
    """The test hook of the module docstring: SIGKILL at ``stage`` of the save of ``prefix``."""
    wanted = os.environ.get(KILL_HOOK)
    if wanted:
        want_stage, _, suffix = wanted.partition("@")
        if want_stage == stage and str(prefix).endswith(suffix):
            os.kill(os.getpid(), signal.SIGKILL)
