"""Shared fixtures: run the CLI in-process or as a real process, build tiny models."""

from __future__ import annotations

import contextlib
import io
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
