"""User-facing errors: each carries everything the message needs.

The CLI turns any :class:`TfgenError` into one message on stderr and a
non-zero exit code, never a traceback.
"""
from __future__ import annotations


class TfgenError(Exception):
    """Base class of errors that are the user's to fix."""

    exit_code = 2

    def lines(self) -> list[str]:
        """The message as the CLI prints it: one line per error."""
        return [str(self)]


class ConfigError(TfgenError):
    """A config value is wrong: names the file, key path, value and what is allowed."""

    def __init__(self, file: str | None, key: str | None, message: str,
                 given: object = ..., allowed: str | None = None):
        self.file, self.key, self.message, self.given, self.allowed = file, key, message, given, allowed
        super().__init__(self._line())

    def _line(self) -> str:
        text = f"{self.file or '<config>'}"
        if self.key:
            text += f": {self.key}"
        text = f"{text}: {self.message}"
        if self.given is not ...:
            text += f"; given {self.given!r}"
        if self.allowed:
            text += f"; allowed: {self.allowed}"
        return text

    def in_file(self, file: str) -> "ConfigError":
        """The same error, attributed to ``file`` (for errors found while building)."""
        return ConfigError(file, self.key, self.message, self.given, self.allowed)

    @staticmethod
    def combine(errors: list["ConfigError"]) -> "ConfigError":
        """One error to raise for ``errors`` (non-empty): itself if alone, else :class:`ConfigErrors`."""
        return errors[0] if len(errors) == 1 else ConfigErrors(errors)


class ConfigErrors(ConfigError):
    """Several errors found in one pass over a config, so a user fixes them all at once.

    A ConfigError itself (its fields are the first error's), so callers that catch
    one error keep working; ``errors`` holds them all, and the message has one line each.
    """

    def __init__(self, errors: list[ConfigError]):
        self.errors = [e for err in errors for e in getattr(err, "errors", [err])]
        first = self.errors[0]
        self.file, self.key, self.message, self.given, self.allowed = (
            first.file, first.key, first.message, first.given, first.allowed)
        TfgenError.__init__(self, "\n".join(e._line() for e in self.errors))

    def in_file(self, file: str) -> "ConfigError":
        return ConfigErrors([e.in_file(file) for e in self.errors])

    def lines(self) -> list[str]:
        return [str(e) for e in self.errors]


class DataError(TfgenError):
    """A data set cannot be found or read."""


class DataFileError(DataError):
    """A data file exists but cannot be used: names the file (and array), the problem and the fix.

    ``within`` adds the config file and key that led to the data file, so the message
    reads like a ConfigError's: ``exp.toml: data.path: /d/x.npz: array 'x_train': ...``.
    """

    def __init__(self, path: object, problem: str, fix: str, array: str | None = None,
                 context: str | None = None):
        self.path, self.problem, self.fix, self.array, self.context = path, problem, fix, array, context
        where = f"{path}" + (f": array {array!r}" if array else "")
        super().__init__((f"{context}: " if context else "") + f"{where}: {problem}; {fix}")

    def within(self, file: str, key: str) -> "DataFileError":
        if self.context:
            return self
        return DataFileError(self.path, self.problem, self.fix, self.array, f"{file}: {key}")


class PluginError(TfgenError):
    """A plugin cannot be loaded (:mod:`tfgen.plugins`): names the plugin, where it came from
    and what went wrong -- its import failed, or it registers a name that another component
    has."""


class TrainingDiverged(TfgenError):
    """The loss became NaN or infinite."""

    exit_code = 3


class CheckpointError(TfgenError):
    """A run's checkpoints cannot be used: names the damaged or missing files."""


class ResourceError(TfgenError):
    """A configuration needs more memory than the machine has (refused before anything is
    allocated): gives the estimate, the available memory and the keys to change."""


class RunFailed(TfgenError):
    """TensorFlow failed during a run (out of memory, an invalid argument ...): names what
    failed and the run directory."""

    exit_code = 1


class StorageError(TfgenError):
    """The file system failed under a command (a full disk, a quota, a read-only or failing
    disk, a deleted run directory): names the path and the cause in words (see
    :mod:`tfgen.storage`), and with :meth:`then` what to do once it is fixed.  Exit code 4, so
    that a script can tell it from bad input (2) and from TensorFlow failing (1)."""

    exit_code = 4

    #: what makes each cause go away (the words of tfgen.storage.CAUSES)
    REMEDIES = {"no space left on device": "once the disk has free space",
                "disk quota exceeded": "once you are within your disk quota",
                "read-only file system": "once the file system is writable again",
                "input/output error": "once the disk is checked (an I/O error is a fault of "
                                      "the disk or the network file system)"}

    def __init__(self, path: object, cause: str, next_step: str | None = None):
        self.path, self.cause, self.next_step = path, cause, next_step
        text = f"{path}: cannot write: {cause}"
        if next_step:
            remedy = self.REMEDIES.get(cause)
            text += f"; {next_step}" + (f" {remedy}" if remedy else "")
        super().__init__(text)

    def then(self, next_step: str) -> "StorageError":
        """The same error, with what to do once the file system is fixed."""
        return StorageError(self.path, self.cause, next_step)


class Interrupted(TfgenError):
    """A signal (Ctrl-C, SIGTERM, SIGUSR1) stopped the command; the message says what was kept
    and how to continue.  The exit code is the shell's for a process the signal ended, 128 +
    its number (tfgen.signals).  ``at_once``: stopped where it was (a second signal, or one
    during evaluation), not at a point of its choosing."""

    def __init__(self, message: str, signum: int, at_once: bool = False):
        super().__init__(message)
        self.signum, self.at_once = signum, at_once
        self.exit_code = 128 + int(signum)
