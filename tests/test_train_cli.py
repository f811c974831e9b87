"""`gpt2 train` end to end: the files a run writes, the defaults chain, and bad
input (issue #4 Done-when 6): one clear line and exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gpt2cli.checkpoint import load_checkpoint_with_meta
from gpt2cli.config import TrainConfig
from gpt2cli.train.run_dir import read_jsonl
from tests.conftest import run_cli
from tests.test_resume import SETTINGS, stories_data  # noqa: F401  (a fixture)

FAST = [a for s in SETTINGS if not s.startswith("train.steps") for a in ("--set", s)]


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--preset", "tiny", "--data", str(data), "--out", str(out), *FAST, *extra]


def one_error_line(r) -> str:
    assert r.code == 2, (r.code, r.out, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.err
    return lines[0]


@pytest.fixture(scope="module")
def short_run(stories_data, tmp_path_factory):  # noqa: F811
    """4 steps at block 32 on a model whose preset context (16) is raised to fit."""
    out = tmp_path_factory.mktemp("cli") / "run"
    r = run_cli(*train_args(stories_data, out, "--steps", "4", "--set", "model.block_size=16", "--eval-every", "2"))
    assert r.code == 0, r.err
    return out, r


def test_a_run_writes_checkpoint_metrics_samples_and_config(short_run, stories_data):  # noqa: F811
    out, r = short_run
    assert "model.block_size raised from 16 to 32 to fit --block-size 32" in r.err
    assert r.out.strip().splitlines()[-1].startswith("trained to step 4 in ")
    model, meta = load_checkpoint_with_meta(out / "ckpt.safetensors")
    assert model.config.block_size == 32 and model.config.n_layer == 2 and model.config.vocab_size == 50257
    assert meta["step"] == "4" and meta["tokens_seen"] == str(4 * 2 * 32)
    train = TrainConfig.model_validate_json(meta["train"])
    assert (train.steps, train.batch_size, train.block_size, train.dtype) == (4, 2, 32, "fp32")
    assert meta["tokenizer"] == "gpt2"

    records = read_jsonl(out / "metrics.jsonl")
    steps = [m for m in records if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    for m in steps:
        assert {"step", "loss", "lr", "tokens_per_sec", "grad_norm", "tokens_seen", "elapsed"} <= m.keys()
        assert m["tokens_seen"] == m["step"] * 64 and m["tokens_per_sec"] > 0 and m["grad_norm"] > 0
    evals = [m for m in records if "val_loss" in m]
    assert [m["step"] for m in evals] == [0, 2, 4]
    # An untrained model is near-uniform over 50257 tokens: ln(50257) = 10.8.
    assert abs(evals[0]["val_loss"] - 10.82) < 0.1 and {"train_loss", "sample_entropy"} <= evals[0].keys()
    # A step line shows the latest val loss with the step it was measured at (it may be old).
    (line3,) = [line for line in (r.out + r.err).splitlines() if line.startswith("step 3 | ")]
    assert f"| val {evals[1]['val_loss']:.4f} @2 |" in line3, line3

    samples = read_jsonl(out / "samples.jsonl")
    assert [s["step"] for s in samples] == [0, 2, 4]
    assert all(s["prompt"] == "Once upon a time" and isinstance(s["text"], str) for s in samples)

    # Each eval records the repetition figures of its samples (issue 7), here
    # checked against a naive seq-rep-4 over the logged sample tokens.
    for ev, sample in zip(evals, samples, strict=True):
        toks = sample["tokens"]
        grams = [tuple(toks[i : i + 4]) for i in range(len(toks) - 3)]
        assert len(grams) >= 1
        assert ev["seq_rep_4"] == pytest.approx(1 - len(set(grams)) / len(grams))
        assert {"loop_share", "distinct_1", "rep_16", "mean_entropy"} <= ev.keys()
        assert "mismatch" not in ev  # three evals of falling loss: nothing to compare yet

    config = json.loads((out / "config.json").read_text())
    assert config["model"]["block_size"] == 32 and config["train"]["steps"] == 4
    assert Path(config["data"]) == stories_data


def test_defaults_chain_and_refusing_to_overwrite(stories_data, tmp_path):  # noqa: F811
    shutil.copytree(stories_data, tmp_path / "data" / "stories")
    args = ["train", *FAST, "--steps", "1"]
    r = run_cli(*args, cwd=tmp_path)
    assert r.code == 0, r.err
    assert "using data: data/stories (the only data dir under ./data)" in r.err
    assert "using preset: tiny" in r.err
    assert "using run dir: runs/stories-tiny-standard" in r.err
    assert (tmp_path / "runs" / "stories-tiny-standard" / "ckpt.safetensors").is_file()
    # The same command again would overwrite the run: refused, pointing at --resume.
    line = one_error_line(run_cli(*args, "--preset", "tiny", "--data", "data/stories", "--out", "runs/stories-tiny-standard", cwd=tmp_path))
    assert "already holds a run's checkpoint" in line and "--resume" in line
    # --resume with the default run dir continues it.
    r = run_cli("train", *FAST, "--steps", "2", "--resume", cwd=tmp_path)
    assert r.code == 0, r.err
    assert "trained to step 2" in r.out


def test_resume_with_a_longer_context_than_the_checkpoint(short_run, stories_data):  # noqa: F811
    out, _ = short_run
    line = one_error_line(run_cli(*train_args(stories_data, out, "--steps", "8", "--resume", "--block-size", "64")))
    assert "--block-size 64" in line and "context" in line and "(32 positions)" in line


def test_resume_cannot_change_the_model(short_run, stories_data):  # noqa: F811
    out, _ = short_run
    line = one_error_line(run_cli(*train_args(stories_data, out, "--steps", "8", "--resume", "--attention", "linear")))
    assert line.startswith("error: --attention linear:") and "cannot change on --resume" in line


def test_missing_data_dir(tmp_path):
    line = one_error_line(run_cli(*train_args(tmp_path / "nope", tmp_path / "run", "--steps", "1")))
    assert "nope" in line and "no such data directory" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("tokenizer", "llama", "tokenizer 'llama'"),
        ("vocab_size", 32000, "32000"),
    ],
)
def test_data_for_another_tokenizer_or_vocab(stories_data, tmp_path, field, value, words):  # noqa: F811
    data = tmp_path / "other"
    shutil.copytree(stories_data, data)
    meta = json.loads((data / "meta.json").read_text())
    meta[field] = value
    (data / "meta.json").write_text(json.dumps(meta))
    line = one_error_line(run_cli(*train_args(data, tmp_path / "run", "--steps", "1")))
    assert str(data) in line and words in line


def test_resume_without_a_checkpoint(stories_data, tmp_path):  # noqa: F811
    line = one_error_line(run_cli(*train_args(stories_data, tmp_path / "empty", "--steps", "1", "--resume")))
    assert "--resume: no checkpoint in" in line


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--steps", "0"], "--steps 0: must be positive"),
        (["--lr", "-1"], "--lr -1.0: must be positive"),
        (["--batch-size", "0"], "--batch-size 0: must be positive"),
        (["--dtype", "fp8"], "--dtype fp8: expected one of"),
        (["--attention", "sparse"], "--attention sparse: expected one of"),
        (["--device", "tpu"], "--device tpu: expected one of"),
        (["--set", "model.n_head=3"], "n_embd (32) must be divisible by n_head (3)"),
        (["--set", "train.nonsense=1"], "train.nonsense: unknown key"),
        (["--set", "oops"], "--set oops: expected model.KEY=VALUE"),
        (["--skip-nonfinite", "-1"], "--skip-nonfinite -1: must be 0 or more"),
        (["--preset", "huge"], "--preset huge"),
    ],
)
def test_bad_flags(stories_data, tmp_path, flags, words):  # noqa: F811
    line = one_error_line(run_cli(*train_args(stories_data, tmp_path / "run", "--steps", "1", *flags)))
    assert words in line


def test_a_fired_mismatch_alarm_is_one_warning_that_names_it_once():
    """The alarm's line already starts with its name; the display adds only `warning:`."""
    import io

    from rich.console import Console

    from gpt2cli.analysis.alarms import mismatch_alarm
    from gpt2cli.cli.train import render_training
    from gpt2cli.train.events import Evaluated

    history = [
        {"step": s, "val_loss": v, "loop_share": r, "loop_count": round(r * 32), "n_samples": 32,
         "seq_rep_4": 0.0, "seq_rep_4_sd": 0.0}
        for s, v, r in ((0, 5.0, 0.0), (10, 4.5, 0.3), (20, 4.0, 0.6))
    ]
    alarm = mismatch_alarm(history)
    assert alarm and alarm.startswith("loss–generation mismatch: ")
    buf = io.StringIO()
    render_training([Evaluated(20, 4.1, 4.0, [], 1.0, mismatch=alarm)], console=Console(file=buf, width=400))
    (line,) = [x for x in buf.getvalue().splitlines() if "mismatch" in x]
    assert line.strip() == f"warning: {alarm}"
