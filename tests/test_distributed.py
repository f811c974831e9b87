"""Data-parallel training (issue #11): 2 gloo ranks on the CPU under torchrun.

Done-when 1: the loss at every step of a 2-rank DDP run (batch B per rank,
grad-accum 2, so the inner micro-step skips the all-reduce) equals that of
one process with batch 2B (the same windows: the reader's k-th global batch
is sliced by rank), within 1e-5; its checkpoint loads in `gpt2 generate`.
Done-when 2: the same with --fsdp (FSDP2, sharded weights and AdamW state,
checkpoint gathered into the single-file format).
Done-when 3: a 2-rank run stopped at step 3 and resumed as 1 rank with batch
2B continues with the losses of the uninterrupted 2-rank run.

The reference is the single-process loop, itself checked against plain
full-batch steps in test_train_step.py and test_resume.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt2cli.checkpoint import load_checkpoint, read_metadata
from gpt2cli.train.run_dir import read_jsonl
from tests.conftest import REPO, CliResult, run_cli, run_cli_process, set_flags, tokenize_stories

STEPS = 6
B = 2  # per-rank micro-batch; the single-process reference uses 2B
SETTINGS = [
    "model.n_layer=2",
    "model.n_head=2",
    "model.n_embd=32",
    "model.dropout=0.0",
    "train.block_size=32",
    "train.grad_accum=2",
    "train.warmup_steps=2",
    "train.log_every=1",
    "train.eval_every=100",
    "train.save_every=3",
    "train.eval_batches=1",
    "train.sample_tokens=4",
    'train.sample_prompts=["Once upon a time"]',
    'train.dtype="fp32"',
    'train.device="cpu"',
]


def train_args(data: Path, out: Path, batch: int, *extra: str) -> list[str]:
    return ["train", "--preset", "tiny", "--data", str(data), "--out", str(out), "--batch-size", str(batch),
            *set_flags(SETTINGS), *extra]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "gpt2cli", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in read_jsonl(run_dir / "metrics.jsonl") if "loss" in m}


def assert_same_weights(ckpt: Path, reference: Path) -> None:
    a, b = load_checkpoint(ckpt), load_checkpoint(reference)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5), name


def generate_from(ckpt: Path) -> CliResult:
    return run_cli("generate", "Once", "--ckpt", ckpt, "--max-new-tokens", "5", "--seed", "1", "--json", "--device", "cpu")


def assert_close_losses(a: dict[int, float], b: dict[int, float], steps) -> None:
    assert sorted(a) == sorted(b) == list(steps)
    diff = max(abs(a[s] - b[s]) for s in steps)
    assert diff <= 1e-5, (diff, a, b)


@pytest.fixture(scope="module")
def stories_data(tmp_path_factory) -> Path:
    return tokenize_stories(tmp_path_factory.mktemp("data"), "20KB", "--val-fraction", "0.1")


@pytest.fixture(scope="module")
def single_run(stories_data, tmp_path_factory) -> Path:
    """The reference: one process, batch 2B."""
    out = tmp_path_factory.mktemp("runs") / "single"
    r = run_cli(*train_args(stories_data, out, 2 * B, "--steps", str(STEPS)))
    assert r.code == 0, r.err
    return out


@pytest.fixture(scope="module")
def ddp_run(stories_data, tmp_path_factory) -> Path:
    """2 ranks through the `--nproc 2` shortcut (which launches torchrun itself)."""
    out = tmp_path_factory.mktemp("runs") / "ddp"
    r = run_cli_process(*train_args(stories_data, out, B, "--steps", str(STEPS), "--nproc", "2"),
                        cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr[-4000:]
    # Rank 0 alone reports: one start line, one final line.
    assert r.stderr.count("training ") == 1 and r.stdout.count("trained to step") == 1, r.stderr
    return out


@pytest.mark.slow
def test_ddp_losses_equal_single_process(single_run, ddp_run):
    ref = losses(single_run)
    assert len(set(ref.values())) > 1  # the model is learning something, not a constant
    assert_close_losses(losses(ddp_run), ref, range(1, STEPS + 1))
    meta = read_metadata(ddp_run / "ckpt.safetensors")
    assert meta["step"] == str(STEPS)
    # The global batch counts every rank: 2 ranks x B x grad-accum 2 x 32 tokens per step.
    assert int(meta["tokens_seen"]) == STEPS * 2 * B * 2 * 32
    config = json.loads((ddp_run / "config.json").read_text())
    assert config["world_size"] == 2
    # Only rank 0 wrote records: one per step, one eval at 0 and at the end.
    records = read_jsonl(ddp_run / "metrics.jsonl")
    assert [r["step"] for r in records if "val_loss" in r] == [0, STEPS]
    assert len([r for r in records if "loss" in r]) == STEPS


@pytest.mark.slow
def test_ddp_checkpoint_matches_and_generates(single_run, ddp_run):
    assert_same_weights(ddp_run / "ckpt.safetensors", single_run / "ckpt.safetensors")
    r = generate_from(ddp_run / "ckpt.safetensors")
    assert r.code == 0, r.err
    assert json.loads(r.out)


@pytest.mark.slow
def test_fsdp_losses_equal_single_process(stories_data, single_run, tmp_path):
    out = tmp_path / "fsdp"
    r = torchrun(*train_args(stories_data, out, B, "--steps", str(STEPS), "--fsdp"))
    assert r.returncode == 0, r.stderr[-4000:]
    assert_close_losses(losses(out), losses(single_run), range(1, STEPS + 1))
    # The gathered single-file checkpoint holds the whole model, and loads anywhere.
    assert_same_weights(out / "ckpt.safetensors", single_run / "ckpt.safetensors")
    g = generate_from(out / "ckpt.safetensors")
    assert g.code == 0, g.err


@pytest.mark.slow
@pytest.mark.parametrize("wrapper", ["ddp", "fsdp"])
def test_full_logits_loss_under_ddp_and_fsdp(stories_data, single_run, ddp_run, tmp_path, wrapper):
    """`--loss full` is what the wrapped LossModule calls (issue 17): the losses of the chunked single process."""
    out = tmp_path / wrapper
    extra = ["--fsdp"] if wrapper == "fsdp" else []
    r = torchrun(*train_args(stories_data, out, B, "--steps", str(STEPS), "--loss", "full", *extra))
    assert r.returncode == 0, r.stderr[-4000:]
    assert "loss: full logits (--loss full; " in r.stderr
    assert json.loads((out / "config.json").read_text())["loss"]["kind"] == "full"
    assert_close_losses(losses(out), losses(single_run), range(1, STEPS + 1))
    val = {m["step"]: m["val_loss"] for m in read_jsonl(out / "metrics.jsonl") if "val_loss" in m}
    # The eval losses (chunked, on B-row batches) equal those of the chunked 2-rank run.
    ref = {m["step"]: m["val_loss"] for m in read_jsonl(ddp_run / "metrics.jsonl") if "val_loss" in m}
    assert_close_losses(val, ref, [0, STEPS])


@pytest.mark.slow
def test_two_ranks_resume_as_one(stories_data, ddp_run, tmp_path):
    out = tmp_path / "resumed"
    r = torchrun(*train_args(stories_data, out, B, "--steps", "3"))
    assert r.returncode == 0, r.stderr[-4000:]
    # One process continues with the global batch kept: 2B per step instead of B on each of 2 ranks.
    r1 = run_cli("train", "--out", out, "--data", stories_data, "--resume", "--steps", str(STEPS),
                 "--batch-size", str(2 * B))
    assert r1.code == 0, r1.err
    assert_close_losses(losses(out), losses(ddp_run), range(1, STEPS + 1))


def test_fsdp_and_nproc_flags_checked(stories_data, tmp_path):
    r = run_cli(*train_args(stories_data, tmp_path / "x", B, "--steps", "1", "--fsdp"))
    assert r.code == 2 and "--fsdp" in r.err and "Traceback" not in r.err, r.err
    r = run_cli(*train_args(stories_data, tmp_path / "y", B, "--nproc", "0"))
    assert r.code == 2 and "--nproc" in r.err, r.err
