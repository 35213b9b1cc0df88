"""Training a scheme: a run's state (state.py: counters, checkpoints, restore), the loop over
epochs and executor calls (loop.py), what happens around it as callbacks (callbacks.py:
summaries, progress, early stopping, checkpoints, NaN, stop signals) and the progress line
(progress.py)."""
from tfgen.training.loop import fit
from tfgen.training.progress import Progress
from tfgen.training.state import TrainingState

__all__ = ["Progress", "TrainingState", "fit"]
