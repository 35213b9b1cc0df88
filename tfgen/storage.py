"""The file system failing under a run: a full disk, a quota, a read-only or failing disk, a run
directory deleted while the run is going -- told as what it is, never as a lack of memory.

One classification (:func:`cause`) maps an ``OSError``'s errno, or the message of a TensorFlow
error (TensorFlow turns the OS error into a status: ``ResourceExhaustedError`` for ENOSPC and
EDQUOT, others for EROFS and EIO, with ``"<path>; <strerror>"`` in its message), to the cause in
words.  Write sites use :func:`writing` (one file: names it); the runner uses
:func:`failures_in` around a whole run (names the file the error names, and tells a deleted run
directory apart).  Both raise :class:`tfgen.errors.StorageError`.

Imports nothing of TensorFlow's: its errors are recognized only if it is already loaded.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import sys
from pathlib import Path
from typing import Callable, Iterator

from tfgen.errors import StorageError

#: the errors of a failing file system, in words (the words of ``os.strerror``, lower-cased,
#: except for EIO's, which says what it is)
CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EIO: "input/output error",
}
DELETED = "the run directory was deleted"

# TensorFlow's message names the file before the OS's words: "... /run/x.tempstate123; No space
# left on device [Op:SaveV2]"
_TF_PATH = re.compile(r"(/[^\s;]+); (?:" + "|".join(re.escape(os.strerror(n)) for n in CAUSES)
                      + r")", re.IGNORECASE)


def cause(err: BaseException) -> str | None:
    """The file system failure ``err`` reports, in words (:data:`CAUSES`); None if it is not one.

    An ``OSError`` by its errno; a TensorFlow error by its message, which carries the OS's
    words (``strerror``) or, in some builds, the errno's name."""
    if isinstance(err, OSError):
        return CAUSES.get(err.errno)
    if not _is_tf_error(err):
        return None
    text = getattr(err, "message", None) or str(err)
    for number, words in CAUSES.items():
        if os.strerror(number).lower() in text.lower() or \
                re.search(rf"\b{errno.errorcode[number]}\b", text):
            return words
    return None


def failure(err: BaseException, path: Path | str | None = None,
            run_dir: Path | str | None = None) -> StorageError | None:
    """``err`` as a :class:`StorageError`, or None if it is not the file system failing.

    It names ``path`` (a write site knows what it writes: the checkpoint, not TensorFlow's
    temporary file), else the file the error names, else ``run_dir``.  With ``run_dir``: if
    that directory is gone, the cause is that it was deleted, whatever the error says (an
    ENOENT, or TensorFlow's NotFoundError, of a file inside it)."""
    if isinstance(err, StorageError):
        found = err
    elif not (isinstance(err, OSError) or _is_tf_error(err)):
        return None
    else:
        words = cause(err)
        named = path or _named_file(err) or run_dir
        found = StorageError(named, words) if words else None
    if run_dir is not None and not Path(run_dir).is_dir():
        return StorageError(run_dir, DELETED)
    return found


def _named_file(err: BaseException) -> str | None:
    """The file an OSError or a TensorFlow error names, if it names one."""
    if isinstance(err, OSError):
        return err.filename
    match = _TF_PATH.search(getattr(err, "message", "") or "")
    return match.group(1) if match else None


@contextlib.contextmanager
def writing(path: Path | str, in_place: bool = False) -> Iterator[None]:
    """Around the writing of ``path``: a failing file system becomes a StorageError naming it.

    ``in_place``: ``path`` is written under its own name (not a temporary one), so on a
    failure what was written of it is removed: a damaged file, holding the space wanted."""
    try:
        yield
    except Exception as err:
        found = failure(err, path)
        if found is not None and in_place:
            with contextlib.suppress(OSError):
                Path(path).unlink(missing_ok=True)
        if found is None or found is err:
            raise
        raise found from err


@contextlib.contextmanager
def failures_in(run_dir: Path, next_step: Callable[[], str] | None = None) -> Iterator[None]:
    """Around the part of a command that writes ``run_dir``: any failure of the file system in
    it (a StorageError from a write site, an OSError or TensorFlow error with a cause, anything
    once the run directory is gone) becomes a StorageError; ``next_step()`` says what the user
    does once the file system is writable again (e.g. the resume command)."""
    try:
        yield
    except Exception as err:
        found = failure(err, run_dir=run_dir)
        if found is None:
            raise
        if found.cause != DELETED and next_step is not None:
            found = found.then(next_step())
        if found is err:
            raise
        raise found from err


def _is_tf_error(err: BaseException) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(err, tf.errors.OpError)
