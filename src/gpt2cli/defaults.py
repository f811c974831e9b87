"""Where commands look when a path is not given: ./data and ./runs.

Each resolver returns the path and a one-line note naming what was picked, so
the CLI can tell the user on stderr (DESIGN.md: every default used is named).
"""

from __future__ import annotations

from pathlib import Path

from gpt2cli.errors import UserError

DATA_ROOT = Path("data")
RUNS_ROOT = Path("runs")


def default_data_dir(root: Path = DATA_ROOT) -> tuple[Path, str]:
    """The only (else the newest) directory under ./data holding a meta.json."""
    dirs = [p for p in root.glob("*") if (p / "meta.json").is_file()] if root.is_dir() else []
    dirs = [p for p in dirs if not p.name.startswith(".")]  # not a `tokenize --force` build (.NAME.tmp-PID)
    if not dirs:
        raise UserError(f"no --data given and no tokenized data under ./{root} (run `gpt2 tokenize` first)")
    newest = max(dirs, key=lambda p: (p / "meta.json").stat().st_mtime)
    how = "the only data dir" if len(dirs) == 1 else f"the newest of {len(dirs)} data dirs"
    return newest, f"data: {newest} ({how} under ./{root})"


def newest_checkpoint(root: Path = RUNS_ROOT) -> tuple[Path, str]:
    """The most recently written checkpoint under ./runs."""
    found = [p for p in root.rglob("*.safetensors") if not p.name.endswith(".optim.safetensors")] if root.is_dir() else []
    found = [p for p in found if not p.name.startswith(".")]
    if not found:
        raise UserError(f"no --ckpt given and no checkpoint under ./{root} (train one with `gpt2 train`)")
    newest = max(found, key=lambda p: p.stat().st_mtime)
    return newest, f"checkpoint: {newest} (the newest under ./{root})"
