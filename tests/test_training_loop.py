"""The training loop's contract with its callbacks (tfgen/training): the events in order, the
steps each executor call covers, and a callback ending training early.  What the run's own
callbacks do (checkpoints, early stopping, NaN, signals, summaries) is tested end to end in
test_run.py, test_faults.py and test_storage.py."""
from __future__ import annotations

import numpy as np

from tfgen.assemble import from_dict
from tfgen.data import DataBundle
from tfgen.runner import build
from tfgen.training import TrainingState
from tfgen.training.callbacks import Callback
from tfgen.training.loop import TrainingLoop


class Recorder(Callback):
    """Records every event; ends training after epoch ``stop_after``."""

    def __init__(self, stop_after: int):
        self.stop_after, self.events = stop_after, []

    def on_train_begin(self):
        self.events.append("train_begin")

    def on_epoch_begin(self, epoch):
        self.events.append(("epoch_begin", epoch.index, epoch.batches_total))

    def on_steps_end(self, epoch, steps):
        self.events.append(("steps", steps.first, steps.last, epoch.images_left))

    def on_epoch_end(self, epoch, record):
        self.events.append(("epoch_end", record["epoch"], record["step"]))
        if record["epoch"] == self.stop_after:
            self.loop.stop_training = True

    def on_train_end(self):
        self.events.append("train_end")


def test_the_loop_calls_its_callbacks_in_order_and_one_of_them_can_stop_it(tmp_path):
    """40 images in batches of 8, 2 steps per executor call: each epoch is 5 steps in calls of
    2, 2 and 1; a callback that stops training after epoch 2 of 3 ends it before epoch 3."""
    cfg = from_dict({
        "data": {"binarize": "static", "val_split": ""},
        "model": {"prior": {"dim": 2}, "decoder": {"name": "mlp", "hidden": [8]},
                  "likelihood": {"name": "bernoulli"}},
        "inference": {"scheme": "vae", "encoder": {"name": "mlp", "hidden": [8]}},
        "train": {"batch_size": 8, "epochs": 3, "steps_per_execution": 2, "compile": "graph"},
        "evaluate": []})
    images = (np.random.default_rng(0).random((40, 8, 8, 1)) < 0.3).astype(np.float32)
    data, scheme, generator = build(cfg, DataBundle.in_memory(cfg.data, images))
    state = TrainingState(cfg, scheme, generator, tmp_path)
    recorder = Recorder(stop_after=2)
    TrainingLoop(state, data, [recorder]).run()
    epoch = lambda index, first: [("epoch_begin", index, 5), ("steps", first, first + 2, 24),
                                  ("steps", first + 2, first + 4, 8),
                                  ("steps", first + 4, first + 5, 0),
                                  ("epoch_end", index + 1, first + 5)]
    assert recorder.events == ["train_begin", *epoch(0, 0), *epoch(1, 5), "train_end"]
    assert (state.epochs_done(), state.steps_done(), len(state.history)) == (2, 10, 2)
    assert not list(tmp_path.iterdir())  # the loop itself writes nothing: its callbacks do
