"""`--log tensorboard` and `--log wandb` (WANDB_MODE=offline) get the same records as metrics.jsonl,
read back with each tool's own reader."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpt2cli.train.run_dir import read_jsonl
from tests.conftest import REPO, run_cli, tiny_preset, tokenize_stories

pytestmark = pytest.mark.xdist_group("log-backends")

PRESET = tiny_preset(steps=6, eval_every=3, log_every=2, sample_tokens=8)


def train_logged(root: Path, *args: str) -> None:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO / "src")}
    env.pop("WANDB_API_KEY", None)
    p = subprocess.run(
        [sys.executable, "-m", "gpt2cli", "train", "--data", "data", "--out", "run", "--device", "cpu",
         "--dtype", "fp32", "--log", "tensorboard", "--log", "wandb", *args],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("log-backends")
    tokenize_stories(root, "40KB", "--seed", "3")
    (root / "tiny.toml").write_text(PRESET, encoding="utf-8")
    train_logged(root, "--preset", "tiny.toml")
    return root / "run"


def jsonl_series(run: Path, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in read_jsonl(run / "metrics.jsonl") if key in r}


def test_tensorboard_event_files_hold_the_metrics(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logged_run / "tensorboard"))
    acc.Reload()
    for tag, key in (("train/loss", "loss"), ("train/lr", "lr"), ("train/grad_norm", "grad_norm"),
                     ("eval/val_loss", "val_loss"), ("eval/train_loss", "train_loss"), ("eval/seq_rep_4", "seq_rep_4")):
        expected = jsonl_series(logged_run, key)
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert set(got) == set(expected) and len(expected) >= 2, tag
        for step, value in expected.items():  # event files store float32
            assert got[step] == np.float32(value), (tag, step)
    assert {e.step for e in acc.Scalars("eval/mismatch_alarm")} == {0, 3, 6}
    assert "samples/text_summary" in acc.Tags()["tensors"]


def _wandb_records(run: Path) -> list[dict]:
    """The offline run's transaction log, read by wandb's own `wandb leet inspect`."""
    (wandb_file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    p = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", str(wandb_file), "--json"],
                       capture_output=True, text=True, timeout=120)
    if p.returncode != 0 and "No such command" in p.stderr:
        pytest.skip("this wandb has no `wandb leet inspect` (0.31+) to read its offline log")
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def test_wandb_offline_run_holds_the_metrics_and_config(logged_run):
    records = _wandb_records(logged_run)
    history = [r["history"]["item"] for r in records if r.get("type") == "history"]
    for tag, key in (("train/loss", "loss"), ("train/lr", "lr"), ("train/grad_norm", "grad_norm"),
                     ("train/tokens_per_sec", "tokens_per_sec"), ("eval/val_loss", "val_loss"),
                     ("eval/loop_share", "loop_share")):
        expected = jsonl_series(logged_run, key)
        got = {row["_step"]: row[tag] for row in history if tag in row}
        assert got == expected and len(expected) >= 2, tag
    assert {row["_step"] for row in history if row.get("samples._type") == "table-file"} == {0, 3, 6}
    (run,) = [r["run"] for r in records if r.get("type") == "run"]
    config = json.loads((logged_run / "config.json").read_text())
    assert run["config"]["update"]["model"] == config["model"]  # the run's config is the W&B config
    assert run["config"]["update"]["train"]["steps"] == 6 and run["display_name"] == "run"


def test_no_backend_is_imported_unless_asked():
    code = ("import sys; from gpt2cli.cli import app; from gpt2cli.train import loop, loggers; "
            "print(sorted(m for m in ('wandb', 'tensorboard', 'torch.utils.tensorboard') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stderr


def test_a_missing_extra_names_the_pip_command(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    r = run_cli("train", "--log", "wandb", "--data", "nowhere", "--out", tmp_path / "run", cwd=tmp_path)
    assert r.code == 2
    assert r.err == "error: --log wandb: wandb is not installed; pip install 'gpt2cli[wandb]'\n"
    assert not (tmp_path / "run").exists()


def test_text_records_reach_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gpt2cli.train.loggers import Loggers

    log = Loggers(["tensorboard"], tmp_path, {"model": {}})
    log.metrics({"step": 4, "val_loss": 2.0, "seq_rep_4": 0.3, "mismatch": "val loss fell while loops rose"})
    log.samples(4, [{"prompt": "Once", "text": "a | b", "mean_entropy": 1.5, "stop_reason": "length"}])
    log.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("eval/mismatch_alarm")] == [1.0]
    (event,) = acc.Tensors("eval/mismatch/text_summary")
    assert event.step == 4 and b"val loss fell while loops rose" in event.tensor_proto.string_val[0]


def test_resume_continues_the_same_wandb_run_and_purges_tensorboard_events(logged_run, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    shutil.copytree(logged_run.parent, tmp_path / "root")
    root = tmp_path / "root"
    # As if a session had logged step 8 and been killed before saving: the resumed run (from step 6)
    # writes step 8 again, and the stale event must be gone, as the stale metrics.jsonl line is.
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(root / "run" / "tensorboard")) as stale:
        stale.add_scalar("train/loss", 123.0, 8)
    with open(root / "run" / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"step": 8, "loss": 123.0}) + "\n")
    train_logged(root, "--resume", "--steps", "9")
    run = root / "run"
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    expected = jsonl_series(run, "loss")
    got = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert got == [(step, np.float32(v)) for step, v in sorted(expected.items())]
    assert 8 in expected and expected[8] != 123.0
    ids = {p.name.rsplit("-", 1)[1] for p in (run / "wandb").glob("offline-run-*")}
    assert len(list((run / "wandb").glob("offline-run-*"))) == 2 and len(ids) == 1  # one W&B run, two sessions


def test_wandb_without_a_login_is_one_line_and_leaves_the_run_dir_empty(logged_run, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    p = subprocess.run(
        [sys.executable, "-m", "gpt2cli", "train", "--preset", "tiny.toml", "--data", "data", "--device", "cpu",
         "--out", tmp_path / "run", "--log", "wandb"],
        cwd=logged_run.parent, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 2, p.stderr
    line = p.stderr.splitlines()[-1]
    assert line.startswith("error: --log wandb: could not start a W&B run (") and "WANDB_MODE=offline" in line
    assert "Traceback" not in p.stderr and not (tmp_path / "run").exists()  # the dir it made is gone again


@pytest.mark.slow
def test_only_rank_0_logs_under_torchrun(logged_run, tmp_path):
    """torchrun's own parser would take `--log` for an abbreviation of its --log-dir: --log-to is the same flag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "gpt2cli",
           "train", "--preset", "tiny.toml", "--data", "data", "--out", str(tmp_path / "ddp"), "--device", "cpu",
           "--dtype", "fp32", "--steps", "4", "--log-to", "tensorboard", "--log-to", "wandb"]
    p = subprocess.run(cmd, cwd=logged_run.parent, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    run = tmp_path / "ddp"
    assert len(list((run / "tensorboard").iterdir())) == 1
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    expected = jsonl_series(run, "loss")
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(s, np.float32(v)) for s, v in sorted(expected.items())]
