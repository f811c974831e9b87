"""Read a run directory into one `RunData`, tolerating a run that is still training.

What a run dir holds (train/run_dir.py writes the first four; `gpt2 eval` and
`gpt2 inspect heads` add theirs when pointed at the run's checkpoint):

- config.json: the resolved run config (model, train, data)
- metrics.jsonl: one record per logged step (has `loss`) and per eval (has `val_loss`)
- samples.jsonl: one record per sample per eval (`step`, `prompt`, `text`, ...)
- ckpt.safetensors: the checkpoint, whose metadata holds `step` and `tokens_seen`
- eval.json (or eval*.json): `gpt2 eval` results (eval_schema.json)
- heads.json (or heads*.json): `gpt2 inspect heads --json` output

A file being appended to may end in a partial line, and any file may be
absent: such gaps become notes in `RunData.problems` / `RunData.missing`,
never errors. Only a missing or empty directory is the user's mistake.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt2cli.errors import UserError
from gpt2cli.jsonfile import parse_json_object

# The names train/run_dir.py (RunDir) gives the run's files; spelled out here so
# reading a report does not import the training stack (and torch) for four strings.
CONFIG = "config.json"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
CHECKPOINT = "ckpt.safetensors"
EVAL_GLOB = "eval*.json"
HEADS_GLOB = "heads*.json"
EVAL_FORMAT = "gpt2cli-eval/1"
RUN_FILES = (CONFIG, METRICS, SAMPLES, CHECKPOINT)


@dataclass
class CheckpointInfo:
    path: Path
    step: int | None
    tokens_seen: int | None
    mtime: float


@dataclass
class Document:
    """A JSON file of the run (an eval result, a heads inspection) with where it came from."""

    path: Path
    data: dict[str, Any]
    mtime: float


@dataclass
class RunData:
    root: Path
    config: dict[str, Any] | None = None
    train_log: list[dict[str, Any]] = field(default_factory=list)  # records with `loss`
    evals: list[dict[str, Any]] = field(default_factory=list)  # records with `val_loss`
    samples: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: CheckpointInfo | None = None
    eval_results: list[Document] = field(default_factory=list)  # oldest checkpoint step first
    heads: Document | None = None  # the newest heads*.json
    problems: list[str] = field(default_factory=list)  # files or lines that could not be read
    present: list[str] = field(default_factory=list)  # names of the files found

    @property
    def total_steps(self) -> int | None:
        """The run's planned steps (config.json), if known."""
        try:
            return int(self.config["train"]["steps"])
        except (TypeError, KeyError, ValueError):
            return None

    @property
    def last_step(self) -> int | None:
        steps = [r["step"] for r in self.train_log + self.evals]
        return max(steps) if steps else None

    def status(self) -> str:
        """One line: how far the run got."""
        last, total = self.last_step, self.total_steps
        if last is None:
            return "no steps logged yet"
        if total is None:
            return f"logged up to step {last} (planned steps unknown: no config.json)"
        if last >= total:
            return f"finished: {total} of {total} steps"
        return f"partial: step {last} of {total} (still training, or stopped early)"


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def read_records(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file, skipping (and noting) lines that do not parse:
    a run killed or still writing can leave a partial last line."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        problems.append(f"{path.name}: could not read ({err.strerror or err})")
        return []
    out, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict) and _finite_number(record.get("step")):
            record["step"] = int(record["step"])
            out.append(record)
        else:
            bad += 1
    if bad:
        problems.append(f"{path.name}: skipped {bad} unreadable line(s)")
    return out


def _read_json(path: Path, what: str, problems: list[str]) -> dict[str, Any] | None:
    """The JSON object in `path`, or None with the reason noted (a report shows what it can)."""
    try:
        return parse_json_object(path.read_bytes(), path.name, what)
    except OSError as err:
        problems.append(f"{path.name}: could not read ({err.strerror or err})")
    except UserError as err:
        problems.append(str(err))
    return None


def _last_per_step(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per step (the last written wins), in step order."""
    by_step: dict[int, dict[str, Any]] = {}
    for r in records:
        by_step[r["step"]] = r
    return [by_step[s] for s in sorted(by_step)]


def _checkpoint(path: Path, problems: list[str]) -> CheckpointInfo | None:
    from gpt2cli.checkpoint import read_metadata

    try:
        meta = read_metadata(path)
    except UserError as err:
        problems.append(str(err))
        return None

    def as_int(key: str) -> int | None:
        try:
            return int(meta[key])
        except (KeyError, ValueError):
            return None

    return CheckpointInfo(path, as_int("step"), as_int("tokens_seen"), path.stat().st_mtime)


def _eval_results(root: Path, problems: list[str]) -> list[Document]:
    docs = []
    for path in sorted(root.glob(EVAL_GLOB)):
        data = _read_json(path, "a `gpt2 eval` result", problems)
        if data is None:
            continue
        if data.get("format") != EVAL_FORMAT:
            problems.append(f"{path.name}: not a `gpt2 eval` result (no format {EVAL_FORMAT})")
            continue
        docs.append(Document(path, data, path.stat().st_mtime))
    def step(doc: Document) -> int:
        ck = doc.data.get("checkpoint")
        value = ck.get("step") if isinstance(ck, dict) else None
        return value if isinstance(value, int) else -1

    docs.sort(key=lambda d: (step(d), d.mtime))
    return docs


def _heads(root: Path, problems: list[str]) -> Document | None:
    """The newest heads*.json that looks like `gpt2 inspect heads --json` output."""
    found = []
    for path in root.glob(HEADS_GLOB):
        data = _read_json(path, "a `gpt2 inspect heads --json` result", problems)
        if data is None:
            continue
        if not {"grids", "inequality", "n_layer", "n_head"} <= data.keys():
            problems.append(f"{path.name}: not a `gpt2 inspect heads --json` result")
            continue
        found.append(Document(path, data, path.stat().st_mtime))
    return max(found, key=lambda d: d.mtime) if found else None


def read_files(run_dir: str | Path) -> list[Path]:
    """The files of `run_dir` a report reads (its inputs); never an earlier report's page or PNGs."""
    root = Path(run_dir)
    named = [root / name for name in RUN_FILES]
    return [p for p in [*named, *root.glob(EVAL_GLOB), *root.glob(HEADS_GLOB)] if p.is_file()]


def load_run(run_dir: str | Path) -> RunData:
    """Everything the report shows, read from `run_dir`.

    Raises UserError when the directory is missing, is not a directory, or
    holds none of a run's files; any other gap is recorded, not raised.
    """
    root = Path(run_dir)
    if not root.exists():
        raise UserError(f"RUN_DIR {root}: no such directory")
    if not root.is_dir():
        raise UserError(f"RUN_DIR {root}: not a directory (give the run's directory, e.g. runs/NAME)")
    present = [name for name in RUN_FILES if (root / name).is_file()]
    evals_found = list(root.glob(EVAL_GLOB))
    heads_found = list(root.glob(HEADS_GLOB))
    if not present and not evals_found and not heads_found:
        raise UserError(
            f"RUN_DIR {root}: not a run directory (none of {', '.join(RUN_FILES)} in it); "
            f"train one with `gpt2 train --out {root}`"
        )
    run = RunData(root=root, present=present)
    if CONFIG in present:
        run.config = _read_json(root / CONFIG, "a run's config", run.problems)
    if METRICS in present:
        records = read_records(root / METRICS, run.problems)
        run.train_log = _last_per_step([r for r in records if _finite_number(r.get("loss"))])
        run.evals = _last_per_step([r for r in records if "val_loss" in r])
    if SAMPLES in present:
        run.samples = [
            r for r in read_records(root / SAMPLES, run.problems) if isinstance(r.get("text"), str)
        ]
    if CHECKPOINT in present:
        run.checkpoint = _checkpoint(root / CHECKPOINT, run.problems)
    run.eval_results = _eval_results(root, run.problems)
    run.heads = _heads(root, run.problems)
    return run
