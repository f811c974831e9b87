"""Shared fixtures: run the CLI in-process or as a real process, build tiny models."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from gpt2cli.cli.app import main
from gpt2cli.config import ModelConfig
from gpt2cli.model import GPT

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*args: str, cwd: Path | None = None) -> CliResult:
    """Run `gpt2 ARGS` in this process (fast); returns exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    code = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in args])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(old)
    return CliResult(code, out.getvalue(), err.getvalue())


def run_cli_process(*args: str, cwd: Path | None = None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run `python -m gpt2cli ARGS` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "gpt2cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def tokenize_stories(root: Path, size: str, *flags: str) -> Path:
    """`gpt2 tokenize --builtin-stories SIZE -o data --workers 1 FLAGS` in `root`; returns root/data."""
    r = run_cli("tokenize", "--builtin-stories", size, "-o", "data", "--workers", "1", *flags, cwd=root)
    assert r.code == 0, r.err
    return root / "data"


def set_flags(settings: list[str]) -> list[str]:
    """`--set KEY=VALUE` for each of `settings`."""
    return [arg for s in settings for arg in ("--set", s)]


def tiny_preset(**train) -> str:
    """A user preset file's TOML: the 2-layer, 32-wide model; [train] batch 2, block 32, one eval
    batch, and `train` (each value written as JSON, which TOML reads alike for these)."""
    train = {"batch_size": 2, "block_size": 32, "eval_batches": 1, **train}
    lines = ["[model]", "n_layer = 2", "n_head = 2", "n_embd = 32", "block_size = 32", "[train]"]
    return "\n".join(lines + [f"{key} = {json.dumps(value)}" for key, value in train.items()]) + "\n"


def tiny_config(**kw) -> ModelConfig:
    base = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=128, dropout=0.0)
    base.update(kw)
    return ModelConfig(**base)


def tiny_model(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config(**kw)).eval()


@pytest.fixture
def one_thread():
    """Models this small gain nothing from threads, and on a busy machine OpenMP's
    spin-waiting makes 2 threads 10x slower than 1."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def cli():
    return run_cli
