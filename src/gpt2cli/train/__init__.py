"""Training: `plan_run` turns flags into a checked `TrainSetup`; `train` runs it,
yielding progress events (events.py) for the CLI to render.

    setup = plan_run("tiny", ["train.steps=100"], Path("data/stories"), Path("runs/x"))
    for event in train(setup):
        print(event)
"""

from gpt2cli.train.loop import NonFiniteError, Trainer, TrainSetup, train
from gpt2cli.train.plan import default_run_dir, plan_run

__all__ = ["NonFiniteError", "TrainSetup", "Trainer", "default_run_dir", "plan_run", "train"]
