"""The signals that stop a command: Ctrl-C (SIGINT), and what a scheduler sends before it
kills -- SIGTERM (Slurm, Kubernetes, preemptible VMs, ``docker stop``) and SIGUSR1 (Slurm's
``--signal=USR1@<seconds>``).  All three are handled alike, by the run's phase
(:class:`InterruptFlag`); commands without phases (``tfgen eval``, ``tfgen complete``, a run
before training starts) stop at once (:func:`stopping_at_once`).

A command a signal stopped exits with 128 + the signal's number (130 SIGINT, 143 SIGTERM,
138 SIGUSR1), the code a shell reports for a process the signal ended, so that a job script
can tell a preemption from a failure.

Test hook: with ``TFGEN_TEST_SIGNAL=<when>:<SIGNAME>`` the process sends itself the signal at
``<when>``: ``<n>`` once training step n is done, as a user's Ctrl-C or a scheduler's SIGTERM at
that moment would; ``evaluate[<i>]`` as the run's i-th evaluation task starts (``tfgen run``'s
own evaluation, or ``tfgen eval`` finishing it).  ``:<SIGNAME>`` may be left out (SIGINT).
tests/test_faults.py uses it to stop real runs at a point that does not depend on the
machine's speed.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
from pathlib import Path

#: the signals that stop a command (SIGUSR1 where the platform has it)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1")
                     if hasattr(signal, name))

TEST_HOOK = "TFGEN_TEST_SIGNAL"


def signal_name(signum: int) -> str:
    """How messages name a signal: "Ctrl-C" for SIGINT, else "SIGTERM", "SIGUSR1"."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def exit_code(signum: int) -> int:
    """The shell's code for a process ended by ``signum``: 128 + its number."""
    return 128 + int(signum)


class StopSignal(KeyboardInterrupt):
    """A signal that stops at once.  A KeyboardInterrupt, as Ctrl-C's own is, so that code
    catching ``Exception`` (TensorFlow's, Keras', ours) lets it through."""

    def __init__(self, signum: int):
        super().__init__(signal_name(signum))
        self.signum = signum


def signal_of(stop: KeyboardInterrupt) -> int:
    """The signal behind a KeyboardInterrupt (SIGINT for Python's own)."""
    return getattr(stop, "signum", signal.SIGINT)


#: tfgen's own code: where a StopSignal may be raised
_OWN_CODE = str(Path(__file__).resolve().parent)


def raise_in_own_code(frame, signum: int) -> None:
    """Raise StopSignal(signum) where the main thread is, if that is tfgen's own code, else as
    soon as it returns to it.

    A signal handler runs between two bytecodes of whatever Python code the main thread is
    in, and that is mostly TensorFlow's: its wrappers around every op and dataset.  An
    exception raised there can land inside a call back from TensorFlow's C++ into Python
    (tensor conversion, op dispatch), whose error path then corrupts the heap: a
    KeyboardInterrupt every few milliseconds while tf.data pipelines are built crashes
    TensorFlow 2.21 within seconds (SIGSEGV, or SIGABRT "free(): invalid next size"); a
    second Ctrl-C doing the same was the "rare SIGSEGV after a second Ctrl-C" of issue 17.
    Deferred to tfgen's innermost frame (a trace function of that frame raises at its next
    line, or as it returns), the exception unwinds only through code that TensorFlow's own
    error handling expects exceptions from.
    """
    own = frame
    while own is not None and not own.f_code.co_filename.startswith(_OWN_CODE):
        own = own.f_back
    if own is None or own is frame:
        raise StopSignal(signum)
    previous = sys.gettrace()

    def at_own_code(traced, event, arg):
        if traced is own and event in ("line", "return"):
            own.f_trace = None
            sys.settrace(previous)
            raise StopSignal(signum)
        return at_own_code if traced is own else None

    own.f_trace, own.f_trace_lines = at_own_code, True
    sys.settrace(lambda *args: None)  # calls a frame's f_trace only while a trace is set


@contextlib.contextmanager
def _handling(handler):
    """``handler`` for every stop signal while the block runs (in the main thread only: Python
    delivers signals there), the previous handlers after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def stopping_at_once():
    """A context in which a stop signal raises :class:`StopSignal` (in tfgen's own code:
    :func:`raise_in_own_code`), further ones are ignored: for commands whose work is kept as
    it is done (``tfgen eval`` writes each task's results when it finishes) or not yet
    started."""
    stopped = False

    def stop(signum, frame):
        nonlocal stopped
        if not stopped:
            stopped = True
            raise_in_own_code(frame, signum)

    with _handling(stop):
        yield


class InterruptFlag:
    """The stop signals during a run, by phase.

    ``training``: the first signal is a request honoured at the next safe point (after a step
    or an epoch's bookkeeping, validation included), so a checkpoint is never taken half-way;
    a second (any of them) stops at once.  ``saving`` (a checkpoint being written, within
    training): the save is never broken; a first signal is a request as in training, a second
    stops at once when the save is done.  ``evaluation``: a signal stops at once (the tasks
    finished are kept; ``tfgen eval`` runs the rest).  ``stopping`` (the run is ending: its
    checkpoint or error is decided, its metrics are being written): signals are ignored,
    there is nothing left to interrupt.  "Stops at once" is a :class:`StopSignal`, after which
    ``interrupted_in`` names the phase it interrupted.
    """

    def __init__(self):
        self.first: int | None = None  # the signal of the pending request
        self.phase = "training"
        self.interrupted_in: str | None = None
        self._after_save: int | None = None  # a signal that stops at once when the save ends
        self._handlers = _handling(self._handler)

    @property
    def requested(self) -> bool:
        return self.first is not None

    def _handler(self, signum, frame):
        if self.phase == "stopping":
            return
        if self.phase in ("training", "saving") and self.first is None:
            self.first = signum
            again = ("Ctrl-C again to stop" if signum == signal.SIGINT else
                     "a second signal stops")
            # said at once, whatever --quiet says: the user (or the scheduler's log) waits
            # for the step to end
            _say(f"{signal_name(signum)}: stopping after this step with a checkpoint "
                 f"({again} at once, without one)")
            return
        if self.phase == "saving":
            self._after_save = signum
            _say(f"{signal_name(signum)}: stopping at once when the checkpoint being written "
                 f"is complete")
            return
        self._stop(signum, frame)

    def _stop(self, signum: int, frame=None):
        self.interrupted_in, self.phase = self.phase, "stopping"
        if frame is None:  # called from tfgen's own code
            raise StopSignal(signum)
        raise_in_own_code(frame, signum)

    def enter(self, phase: str) -> None:
        """Go on to ``phase``; a request still pending stops a phase that stops at once."""
        self.phase = phase
        if phase == "evaluation" and self.first is not None:
            self._stop(self.first)

    @contextlib.contextmanager
    def saving(self):
        """A checkpoint is being written: no signal breaks it (see the class)."""
        outer, self.phase = self.phase, "saving"
        try:
            yield
        finally:
            if self.phase == "saving":
                self.phase = outer
        if self._after_save is not None:
            self._stop(self._after_save)

    def __enter__(self):
        self._handlers.__enter__()
        return self

    def __exit__(self, *exc):
        return self._handlers.__exit__(*exc)


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- test hook

class _Hook:
    """``TFGEN_TEST_SIGNAL`` (see the module's docstring), read once."""

    def __init__(self, text: str):
        self.step, self.task, self.signum = None, None, signal.SIGINT
        if not text:
            return
        match = re.fullmatch(r"(?:(\d+)|evaluate\[(\d+)\])(?::(SIG[A-Z0-9]+))?", text.strip())
        if match is None:
            raise ValueError(f"{TEST_HOOK}={text!r}: expected <step>[:<SIGNAME>] or "
                             f"evaluate[<i>][:<SIGNAME>]")
        step, task, name = match.groups()
        self.step = int(step) if step else None
        self.task = int(task) if task else None
        if name:
            self.signum = getattr(signal, name)

    def after_steps(self, before: int, after: int) -> None:
        """Training went from step ``before`` to step ``after``."""
        if self.step is not None and before < self.step <= after:
            os.kill(os.getpid(), self.signum)

    def at_task(self, index: int) -> None:
        """The run's evaluation task ``index`` starts."""
        if self.task == index:
            os.kill(os.getpid(), self.signum)


def hook_from_env() -> _Hook:
    """The test hook as the environment sets it (inactive when unset)."""
    return _Hook(os.environ.get(TEST_HOOK, ""))
