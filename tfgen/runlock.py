"""One writer per run directory: an advisory lock that tfgen's writers (``tfgen run``, ``run
--resume``, ``eval``, ``complete``) hold on ``<run>/.lock`` from start to exit.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on the file, so the kernel releases it when its holder
ends in any way (SIGKILL, an OOM kill, a crash): a lock left by a killed process is free, and
taken over, without anyone deciding that it is stale.  While it is held, the file says who
holds it (PID, host, command, since when) for the refusal message of a second writer; it is
emptied when released.  The file itself is never deleted (a process could lock a deleted
file while another creates a new one): it stays in the run directory, empty.  Readers
(TensorBoard, ``tfgen validate RUN/config.toml``, reading ``metrics.json``) take nothing.

On a shared file system: NFSv4 carries ``flock`` to the server (Linux emulates it with a POSIX
lock there), so writers on two hosts exclude each other, and the server frees the lock of a
crashed client when its lease ends.  Some file systems keep ``flock`` local to each host (NFS
mounted with ``local_lock=flock``/``all``, some cluster file systems without their ``flock``
mount option): there, a lock taken on another host is invisible.  So a free lock whose file
still names another host (its holder ended without releasing it -- killed -- or holds it
where this host cannot see) is taken over with a warning naming that host and process; a file
system without ``flock`` at all (ENOLCK, EOPNOTSUPP) gives a warning and no lock.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Iterator

from tfgen import storage
from tfgen.errors import TfgenError

LOCK_NAME = ".lock"
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


class RunInUse(TfgenError):
    """Another tfgen process writes the run directory: names it (PID, host, command)."""


def holder_text(holder: dict) -> str:
    """'PID 123 on host h (tfgen run --resume r, since 2026-01-01T10:00:00)'."""
    if not holder:
        return "a process that has not written its PID yet"
    extra = ", ".join(part for part in (holder.get("command"),
                                        f"since {holder['since']}" if holder.get("since") else "")
                      if part)
    return (f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}"
            + (f" ({extra})" if extra else ""))


def read_holder(path: Path) -> dict:
    """What the lock file says of its holder ({} if empty, unreadable or not ours)."""
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


@contextlib.contextmanager
def holding(run_dir: Path, command: str | None = None) -> Iterator[int]:
    """Hold ``run_dir``'s lock for the body; a second writer is refused with :class:`RunInUse`
    naming the holder, before it changes anything.  ``command``: what this process runs, as
    the refusal tells it (default: its command line).  Yields the locked file's descriptor: a
    child process that inherits it (``pass_fds``) shares the lock, which is then free only
    once both have ended (tfgen sweep's trials)."""
    from tfgen.training import Progress  # warnings are printed as the run's others are

    path = Path(run_dir) / LOCK_NAME
    with storage.writing(path):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            raise RunInUse(f"{run_dir}: is in use by {holder_text(read_holder(path))}; wait "
                           f"for it to end (or stop it) and try again; reading the run "
                           f"(TensorBoard, metrics.json) needs no lock") from None
        except OSError as err:
            if err.errno not in _UNSUPPORTED:
                raise
            Progress.warn(f"{path}: this file system cannot lock files ({err.strerror}); "
                          f"nothing stops a second tfgen from writing {run_dir} at the same time")
            locked = False
        if locked:
            left = read_holder(path)
            if left and left.get("host") != platform.node():
                Progress.warn(f"{path}: was not released by {holder_text(left)}; taken over (on "
                              f"a file system whose locks do not reach across hosts, make sure "
                              f"that process has ended)")
            _write_holder(fd, command)
        try:
            yield fd
        finally:
            if locked:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)  # released: the file names no holder
    finally:
        os.close(fd)  # releases the lock


def _write_holder(fd: int, command: str | None) -> None:
    """Who holds the lock, for a second writer's refusal; best effort (on a full disk the
    lock still holds, the refusal just cannot name its holder)."""
    holder = {"pid": os.getpid(), "host": platform.node(),
              "command": command or shlex.join(["tfgen", *sys.argv[1:]]),
              "since": dt.datetime.now().isoformat(timespec="seconds")}
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
