"""Logging backends beside metrics.jsonl: Weights & Biases and TensorBoard (`--log`).

Each receives exactly the records the run dir's files get: every logged step
(loss, lr, grad norm, tokens/s, MFU) under `train/`, every eval (losses,
generation figures, the mismatch alarm) under `eval/`, and the samples as
text. Both are optional extras, imported only when asked for; only rank 0
logs (the loop creates them there alone).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Any

from gpt2cli.errors import UserError

# --log name -> (module it needs, the extra that installs it)
BACKENDS = {"wandb": ("wandb", "wandb"), "tensorboard": ("tensorboard", "tensorboard")}


def check_backends(names: list[str]) -> None:
    """Refuse unknown backends and missing extras before any work starts."""
    for name in names:
        if name not in BACKENDS:
            raise UserError(f"--log {name}: expected one of {', '.join(BACKENDS)}")
        module, extra = BACKENDS[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"--log {name}: {module} is not installed; pip install 'gpt2cli[{extra}]'")


def _scalars(record: dict[str, Any]) -> tuple[int, dict[str, float], str | None]:
    """(step, {tag: value}, mismatch text) of one metrics.jsonl record."""
    section = "eval" if "val_loss" in record else "train"
    out = {}
    for key, value in record.items():
        if key in ("step", "mismatch") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[f"{section}/{key}"] = float(value)
    mismatch = record.get("mismatch")
    if section == "eval" and "seq_rep_4" in record:  # an eval with samples: the alarm was checked
        out["eval/mismatch_alarm"] = 1.0 if mismatch else 0.0
    return int(record["step"]), out, mismatch


def _samples_markdown(records: list[dict[str, Any]]) -> str:
    lines = ["| prompt | sample | entropy | stop |", "|---|---|---|---|"]
    for r in records:
        text = " ".join(str(r.get("text", "")).split()).replace("|", "\\|")
        ent = r.get("mean_entropy")
        shown = f"{ent:.2f}" if isinstance(ent, float) and math.isfinite(ent) else "—"
        lines.append(f"| {r.get('prompt', '')} | {text} | {shown} | {r.get('stop_reason', '')} |")
    return "\n".join(lines)


class TensorBoardLogger:
    """Event files in RUN_DIR/tensorboard (`tensorboard --logdir RUN_DIR`)."""

    def __init__(self, run_dir: Path, config: dict[str, Any], resumed_at: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        # On resume, drop the events a killed session wrote after its last checkpoint
        # (they are about to be written again), as metrics.jsonl does.
        purge = None if resumed_at is None else resumed_at + 1
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=purge)
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def metrics(self, record: dict[str, Any]) -> None:
        step, scalars, mismatch = _scalars(record)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        if mismatch:
            self.writer.add_text("eval/mismatch", mismatch, step)

    def samples(self, step: int, records: list[dict[str, Any]]) -> None:
        if records:
            self.writer.add_text("samples", _samples_markdown(records), step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A W&B run named after the run dir, its files under RUN_DIR/wandb; WANDB_MODE=offline works."""

    def __init__(self, run_dir: Path, config: dict[str, Any], resumed_at: int | None = None):
        import wandb

        self.wandb = wandb
        # One W&B run per run dir: a resumed run continues it (its id is kept beside W&B's files).
        id_file = Path(run_dir) / "wandb" / "gpt2cli-run-id"
        run_id = id_file.read_text(encoding="utf-8").strip() if resumed_at is not None and id_file.is_file() else None
        try:
            self.run = wandb.init(
                project=os.environ.get("WANDB_PROJECT", "gpt2cli"),
                name=Path(run_dir).resolve().name,
                dir=str(run_dir),
                config=config,
                id=run_id,
                resume="allow" if run_id else None,
            )
        except wandb.errors.Error as err:  # not logged in, no network, ...
            msg = " ".join(str(err).split())
            raise UserError(
                f"--log wandb: could not start a W&B run ({msg}); log in with `wandb login`, "
                "or set WANDB_MODE=offline to keep the run on disk"
            ) from None
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(self.run.id + "\n", encoding="utf-8")

    def metrics(self, record: dict[str, Any]) -> None:
        step, scalars, mismatch = _scalars(record)
        if mismatch:
            scalars["eval/mismatch"] = mismatch
        self.run.log(scalars, step=step)

    def samples(self, step: int, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        table = self.wandb.Table(columns=["step", "prompt", "text", "mean_entropy", "stop_reason"])
        for r in records:
            table.add_data(step, r.get("prompt"), r.get("text"), r.get("mean_entropy"), r.get("stop_reason"))
        self.run.log({"samples": table}, step=step)

    def close(self) -> None:
        self.run.finish()


class Loggers:
    """The backends of one run, fed the same records as metrics.jsonl and samples.jsonl."""

    def __init__(self, names: list[str], run_dir: Path, config: dict[str, Any], resumed_at: int | None = None):
        check_backends(names)
        kinds = {"wandb": WandbLogger, "tensorboard": TensorBoardLogger}
        self.backends = [kinds[name](run_dir, config, resumed_at) for name in dict.fromkeys(names)]

    def metrics(self, record: dict[str, Any]) -> None:
        for b in self.backends:
            b.metrics(record)

    def samples(self, step: int, records: list[dict[str, Any]]) -> None:
        for b in self.backends:
            b.samples(step, records)

    def close(self) -> None:
        for b in self.backends:
            b.close()
        self.backends = []
