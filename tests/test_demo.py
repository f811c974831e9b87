"""`gpt2 demo`'s pipeline on a small budget: corpus -> tokenize -> train -> before/after.

The real demo (10 MB, 100 steps of the tiny preset, then eval and inspect)
takes minutes; `make demo` runs it. Here the same stages run on 250 KB and a
shrunken model.
"""

from __future__ import annotations

import pytest

from gpt2cli.checkpoint import read_metadata
from gpt2cli.data.meta import read_meta
from gpt2cli.train.demo import DataReady, Stage, run_demo
from gpt2cli.train.events import Evaluated, Finished, Started
from tests.conftest import run_cli

SHRINK = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "train.batch_size=2",
    "train.block_size=32",
    "train.eval_batches=1",
    "train.sample_tokens=4",
    "train.eval_every=3",
]


def test_demo_pipeline_and_rerun(tmp_path):
    out = tmp_path / "demo"
    events = list(run_demo(out, corpus_bytes=250_000, steps=3, extra_settings=SHRINK))
    stages = [e.index for e in events if isinstance(e, Stage)]
    assert stages == [1, 2]
    ready = next(e for e in events if isinstance(e, DataReady))
    assert not ready.reused and ready.tokens["train"] > 50_000 and ready.tokens["val"] > 0
    meta = read_meta(out / "data")
    assert meta.builtin_stories["bytes"] >= 250_000 and meta.tokenizer == "gpt2"
    started = next(e for e in events if isinstance(e, Started))
    assert started.device == "cpu" and started.tokens_per_step == 64
    evals = [e for e in events if isinstance(e, Evaluated)]
    assert [e.step for e in evals] == [0, 3]  # before and after training, with samples
    # train.eval_samples samples per eval (the mismatch alarm's evidence), the three prompts cycled
    assert all(len(e.samples) == 16 and len({s.prompt for s in e.samples}) == 3 for e in evals)
    assert evals[-1].val_loss < evals[0].val_loss
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.reason == "done"
    assert finished.path == out / "run" / "ckpt.safetensors"
    assert read_metadata(finished.path)["step"] == "3"

    # Again: the corpus is reused and the earlier run kept; the new one goes beside it.
    again = list(run_demo(out, corpus_bytes=250_000, steps=1, extra_settings=SHRINK))
    assert next(e for e in again if isinstance(e, DataReady)).reused
    assert again[-1].path == out / "run-2" / "ckpt.safetensors"
    assert read_metadata(out / "run" / "ckpt.safetensors")["step"] == "3"


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--corpus-size", "10KB"], "--corpus-size 10000 bytes: too small"),
        (["--corpus-size", "lots"], "--corpus-size 'lots'"),
        (["--steps", "0"], "--steps 0: must be positive"),
        (["--minutes", "-1"], "--minutes -1.0: must be positive"),
    ],
)
def test_demo_bad_flags(tmp_path, flags, words):
    r = run_cli("demo", "--out", str(tmp_path / "d"), *flags)
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert lines[-1].startswith("error: ") and words in lines[-1], r.err


def test_demo_help_names_its_time_and_the_cap():
    """`gpt2 demo --help` says it takes a few minutes and that --minutes caps the training."""
    r = run_cli("demo", "--help")
    assert r.code == 0
    text = " ".join(r.out.replace("│", " ").split())
    assert "a few minutes" in text
    assert "training stops after --minutes" in text
