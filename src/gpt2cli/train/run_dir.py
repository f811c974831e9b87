"""The files of a training run, all in one directory:

- `ckpt.safetensors`: the checkpoint (weights + metadata; DESIGN.md format)
- `ckpt.optim.safetensors`: the resume state (see state.py)
- `config.json`: the resolved run config
- `metrics.jsonl`: one JSON object per logged step and per eval
- `samples.jsonl`: one JSON object per sample from the fixed prompts, per eval
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

from gpt2cli.atomic import write_text_atomic
from gpt2cli.errors import UserError, write_failed
from gpt2cli.outputs import DirLock, check_output_dir, missing_dirs, pid_alive, remove_empty_dirs
from gpt2cli.train.state import resume_path

# safetensors writes through its own temporary file (Rust's tempfile: ".tmp" and
# six random characters) in the target's directory before renaming it.
_SAFETENSORS_TMP = re.compile(r"\.tmp[A-Za-z0-9]{6}")


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.created: list[Path] = []  # the dirs `create` made, deepest first

    @property
    def ckpt(self) -> Path:
        return self.root / "ckpt.safetensors"

    @property
    def resume_state(self) -> Path:
        return resume_path(self.ckpt)

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def samples(self) -> Path:
        return self.root / "samples.jsonl"

    def has_checkpoint(self) -> bool:
        return self.ckpt.exists() or self.resume_state.exists()

    def create(self) -> None:
        check_output_dir("--out", self.root, writer="gpt2 train")
        if self.config.is_file() and not _is_run_config(self.config):
            # Another program's config.json (a Hugging Face export, a project folder): not ours to replace.
            raise UserError(
                f"--out {self.root}: holds a config.json that is not a run's; choose another --out"
            )
        self.created = missing_dirs(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"--out {self.root}: cannot create the directory ({err.strerror or err})") from None

    def remove_if_empty(self) -> None:
        """After a run that failed before writing anything: the dirs `create` made go again."""
        remove_empty_dirs(self.created)

    def lock(self) -> contextlib.AbstractContextManager:
        """The run dir's lock (outputs.DirLock), taken by rank 0: the other ranks of
        the same run write nothing here."""
        if os.environ.get("RANK", "0") != "0":
            return contextlib.nullcontext()
        return DirLock.acquire(self.root, flag="--out", command="train")

    def write_config(self, data: dict[str, Any]) -> None:
        write_text_atomic(self.config, json.dumps(data, indent=2) + "\n")

    def append(self, path: Path, record: dict[str, Any]) -> None:
        """One JSON line. A kill mid-write leaves at most a partial last line,
        which `truncate_after` drops on resume."""
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        except OSError as err:
            raise write_failed(path, err) from None

    def log_metrics(self, record: dict[str, Any]) -> None:
        self.append(self.metrics, record)

    def log_samples(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.append(self.samples, record)

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete temporary files that a killed run left half-written: atomic.py's
        `.NAME.tmp-PID` (unless that process is still alive) and safetensors' own.
        Called when a run starts, under the run dir's lock."""
        removed = []
        names = {p.name for p in (self.ckpt, self.resume_state, self.config, self.metrics, self.samples)}
        for path in self.root.glob(".tmp*"):
            if _SAFETENSORS_TMP.fullmatch(path.name) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
        for path in self.root.glob(".*.tmp-*"):
            name, _, pid = path.name[1:].rpartition(".tmp-")
            if name not in names or not pid.isdigit() or pid_alive(int(pid)):
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
        return removed

    def truncate_after(self, step: int) -> None:
        """On resume: drop records past the resumed step (written by the run
        after its last checkpoint, they are about to be written again)."""
        for path in (self.metrics, self.samples):
            if not path.exists():
                continue
            kept = []
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a partial line from a killed run
                if isinstance(record, dict) and int(record.get("step", 0)) <= step:
                    kept.append(line)
            write_text_atomic(path, "".join(line + "\n" for line in kept))


def _is_run_config(path: Path) -> bool:
    """config.json as `write_config` writes it (an earlier attempt of this run may have left one)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and isinstance(data.get("model"), dict) and isinstance(data.get("train"), dict)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics/samples file (for tests, plots and `eval`)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out
