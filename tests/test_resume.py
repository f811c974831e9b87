"""Resuming to the bit, crash-safe checkpoints, clean stops on signals.

Done-when 3 of issue #4: 20 steps straight == 10 steps + resume 10 steps
(every loss and every final weight, fp32 on the CPU, dropout on so the RNG
state matters). Done-when 4: a crash between writing a checkpoint and renaming
it leaves the previous one loadable and resumable.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gpt2cli.checkpoint import load_checkpoint, read_metadata
from gpt2cli.train import NonFiniteError, Trainer, plan_run, train
from gpt2cli.train.events import Finished, Logged, Saved
from gpt2cli.train.run_dir import read_jsonl
from gpt2cli.train.state import read_resume_metadata
from tests.conftest import REPO, run_cli, set_flags, tokenize_stories

STEPS = 20
# Tiny widths; dropout on, so resuming must restore the RNG state too.
SETTINGS = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.dropout=0.1",
    "train.batch_size=2",
    "train.block_size=32",
    "train.warmup_steps=3",
    "train.log_every=1",
    "train.eval_every=8",
    "train.save_every=5",
    "train.eval_batches=1",
    "train.sample_tokens=4",
    "train.eval_samples=1",
    'train.sample_prompts=["Once upon a time"]',
    'train.dtype="fp32"',
    'train.device="cpu"',
    f"train.steps={STEPS}",
]


def cli_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "tiny", "--data", str(data), "--out", str(out), *set_flags(SETTINGS), *extra]


@pytest.fixture(scope="module")
def stories_data(tmp_path_factory) -> Path:
    return tokenize_stories(tmp_path_factory.mktemp("data"), "60KB", "--val-fraction", "0.1")


@pytest.fixture(scope="module")
def straight_run(stories_data, tmp_path_factory) -> Path:
    """The reference: 20 steps in one go, through the CLI."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    r = run_cli(*cli_args(stories_data, out))
    assert r.code == 0, r.err
    return out


def step_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(m["step"], m["loss"]) for m in read_jsonl(run_dir / "metrics.jsonl") if "loss" in m]


def assert_same_run(a: Path, b: Path) -> None:
    la, lb = step_losses(a), step_losses(b)
    assert [s for s, _ in la] == list(range(1, STEPS + 1))
    assert la == lb  # exact float equality at every step
    for name in ("ckpt.safetensors", "ckpt.optim.safetensors"):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        skip = {"rng.python", "rng.numpy", "rng.torch_cpu"} if name.endswith("optim.safetensors") else set()
        assert ta.keys() == tb.keys()
        different = [k for k in ta if k not in skip and not torch.equal(ta[k], tb[k])]
        assert not different, different[:5]
    # Evals (losses on fixed batches, samples) match too.
    evals = [
        [{k: v for k, v in m.items() if k != "eval_seconds"} for m in read_jsonl(d / "metrics.jsonl") if "val_loss" in m]
        for d in (a, b)
    ]
    assert evals[0] == evals[1] and len(evals[0]) >= 3
    assert read_jsonl(a / "samples.jsonl") == read_jsonl(b / "samples.jsonl")


def run_library(data: Path, out: Path, resume: bool, stop_after: int | None = None) -> Finished:
    setup = plan_run(None if resume else "tiny", SETTINGS, data, out, resume=resume)
    seen = {"step": None}
    finished = None
    for event in train(setup, handle_signals=False, stop=lambda: stop_after is not None and seen["step"] == stop_after):
        if isinstance(event, Logged):
            seen["step"] = event.step
        if isinstance(event, Finished):
            finished = event
    return finished


@pytest.mark.slow
def test_ten_plus_resumed_ten_equals_twenty_straight(stories_data, straight_run, tmp_path):
    out = tmp_path / "halves"
    first = run_library(stories_data, out, resume=False, stop_after=10)
    assert (first.step, first.reason) == (10, "interrupted")
    assert read_metadata(out / "ckpt.safetensors")["step"] == "10"
    second = run_library(stories_data, out, resume=True)
    assert (second.step, second.reason) == (STEPS, "done")
    assert_same_run(straight_run, out)


class FailingReplace:
    """os.replace that raises once, when the save at `step` renames `name` into place."""

    def __init__(self, name: str, nth: int):
        self.name, self.nth, self.count, self.real = name, nth, 0, os.replace

    def __call__(self, src, dst, *a, **kw):
        if Path(dst).name == self.name:
            self.count += 1
            if self.count == self.nth:
                raise OSError(28, "No space left on device")
        return self.real(src, dst, *a, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ckpt.optim.safetensors", "ckpt.safetensors"])
def test_crash_before_rename_keeps_previous_checkpoint(stories_data, straight_run, tmp_path, monkeypatch, name):
    out = tmp_path / "crash"
    # Saves happen at steps 5, 10, ...: the second one fails to rename `name`.
    monkeypatch.setattr(os, "replace", FailingReplace(name, nth=2))
    r = run_cli(*cli_args(stories_data, out))
    monkeypatch.undo()
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert lines[-1].startswith("error: ") and name in lines[-1] and "No space left" in lines[-1]
    assert "Traceback" not in r.err
    # No half-written files under any name; the previous checkpoint loads.
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    meta = read_metadata(out / "ckpt.safetensors")
    assert meta["step"] == "5"
    model = load_checkpoint(out / "ckpt.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # A temporary file a SIGKILLed run would leave behind (its process is gone) is cleaned up.
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    stale = out / f".ckpt.safetensors.tmp-{dead.pid}"
    stale.write_bytes(b"half a checkpoint")
    # Resuming finishes the run exactly as if nothing had happened.
    r = run_cli(*cli_args(stories_data, out, "--resume"))
    assert r.code == 0, r.err
    assert not stale.exists()
    assert_same_run(straight_run, out)


def test_sigint_in_process_saves_at_the_next_step(stories_data, tmp_path):
    # The handler only sets a flag; the loop saves at the next step boundary.
    setup = plan_run("tiny", SETTINGS, stories_data, tmp_path / "int")
    finished = None
    for event in train(setup):
        if isinstance(event, Logged) and event.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        if isinstance(event, Finished):
            finished = event
    assert (finished.reason, finished.signal, finished.step) == ("interrupted", "SIGINT", 2)
    assert read_metadata(finished.path)["step"] == "2"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


@pytest.mark.slow
def test_sigterm_through_the_cli_saves_and_exits_zero(stories_data, tmp_path):
    sig = signal.SIGTERM
    out = tmp_path / "sig"
    args = cli_args(stories_data, out, "--steps", "100000", "--save-every", "100000")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (out / "metrics.jsonl").exists() and len(step_losses(out)) >= 2:
                break
            time.sleep(0.2)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 1, stdout
    assert lines[0].startswith(f"interrupted by {sig.name} after step ")
    step = int(lines[0].split("after step ")[1].split(":")[0])
    assert step >= 2 and str(out / "ckpt.safetensors") in lines[0]
    assert read_metadata(out / "ckpt.safetensors")["step"] == str(step)
    assert read_resume_metadata(out / "ckpt.optim.safetensors")["step"] == str(step)


def nan_at(trainer: Trainer, bad_steps: set[int]) -> None:
    """Make the training loss NaN at the given (1-based) steps; evals are untouched."""
    real, calls = trainer.loss_fn, {"n": 0}

    def loss_fn(x, y):
        calls["n"] += 1
        loss = real(x, y)
        return loss * float("nan") if calls["n"] in bad_steps else loss

    trainer.loss_fn = loss_fn


def test_nonfinite_stops_naming_the_step_and_keeps_the_checkpoint(stories_data, tmp_path):
    # Logs (host syncs) only every 4 steps: the bad step 7 is noticed at step 8 and still named.
    setup = plan_run("tiny", SETTINGS + ["train.log_every=4"], stories_data, tmp_path / "nan")
    trainer = Trainer(setup)
    nan_at(trainer, {7})
    saved = {}
    with pytest.raises(NonFiniteError) as err:
        for event in trainer.run():
            if isinstance(event, Saved):
                saved[event.step] = hashlib.sha256(event.path.read_bytes()).hexdigest()
    message = str(err.value)
    assert message.startswith("step 7: the loss or gradients are not finite") and "\n" not in message
    assert "step 5" in message  # the last good checkpoint is named
    ckpt = setup.run_dir.ckpt
    assert list(saved) == [5] and hashlib.sha256(ckpt.read_bytes()).hexdigest() == saved[5]
    assert read_metadata(ckpt)["step"] == "5"


def test_skip_nonfinite_skips_the_update(stories_data, tmp_path):
    setup = plan_run("tiny", SETTINGS + ["train.skip_nonfinite=1"], stories_data, tmp_path / "skip")
    trainer = Trainer(setup)
    nan_at(trainer, {7})
    events = list(trainer.run())
    assert isinstance(events[-1], Finished) and events[-1].step == STEPS
    logged = [e for e in events if isinstance(e, Logged)]
    assert [e.skipped for e in logged][5:8] == [0, 1, 1]
    tensors = load_file(str(setup.run_dir.resume_state))
    steps = {float(v) for k, v in tensors.items() if k.startswith("optim.step.")}
    assert steps == {STEPS - 1.0}  # the bad step's update (and its Adam step count) was skipped
    assert all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("model."))


def test_resume_without_state_or_finished_run_is_refused(stories_data, tmp_path):
    out = tmp_path / "short"
    assert run_cli(*cli_args(stories_data, out, "--steps", "2")).code == 0
    r = run_cli(*cli_args(stories_data, out, "--steps", "2", "--resume"))
    assert r.code == 2 and "already has 2 of its 2 steps" in r.err
    (out / "ckpt.optim.safetensors").unlink()
    r = run_cli(*cli_args(stories_data, out, "--steps", "4", "--resume"))
    assert r.code == 2 and "no resume state" in r.err and "Traceback" not in r.err
