"""What training says on stderr: a progress line per epoch, messages, warnings."""
from __future__ import annotations

import sys
import time


class Progress:
    """A one-line progress bar on stderr (an epoch summary line when stderr is not a terminal)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def update(self, epoch: int, epochs: int, done: int, total: int, loss, rate: float,
               step: int, final: bool = False) -> None:
        """``loss``: a number, or a function giving it (called only if the line is drawn)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and (not self.tty or now - self._last < 0.2):
            return
        self._last = now
        if callable(loss):  # read from the device only when the line is drawn
            loss = loss()
        width = 24
        filled = int(width * done / max(total, 1))
        bar = "#" * filled + "." * (width - filled)
        line = (f"epoch {epoch + 1}/{epochs} [{bar}] {done}/{total} step {step} "
                f"loss {loss:.4g} {rate:,.0f} img/s")
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    @staticmethod
    def warn(text: str) -> None:
        """A line the user must see, even with --quiet (e.g. a damaged checkpoint passed over)."""
        sys.stderr.write(f"warning: {text}\n")
        sys.stderr.flush()
