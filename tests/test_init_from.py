"""`gpt2 train --init-from`: a hub name (from a huggingface_hub cache laid out on disk,
offline), an HF directory and a gpt2cli checkpoint all start from exactly the
source's weights: the step-0 eval loss equals transformers' loss on the same
batches. Nothing touches the network (HF_HUB_OFFLINE=1 wherever a hub name is used)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import GPT2Config, GPT2LMHeadModel

from gpt2cli.checkpoint import load_checkpoint_with_meta
from gpt2cli.train.loop import open_reader
from gpt2cli.train.run_dir import read_jsonl
from tests.conftest import REPO, run_cli, tokenize_stories

pytestmark = pytest.mark.xdist_group("init-from")

SHAPE = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64)  # GPT-2's vocabulary: the data's tokenizer
COMMIT = "0123456789abcdef0123456789abcdef01234567"
FAST = ("--steps", "3", "--dtype", "fp32", "--device", "cpu", "--set", "train.sample_tokens=8")
SEED, EVAL_BATCHES, BATCH = 1337, 8, 4  # the finetune preset's


def hf_reference() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(**SHAPE)).eval()
    with torch.no_grad():  # HF zero-inits biases and LN; randomise so every weight is tested
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def hub_cache(root: Path, repo: str, snapshot: Path) -> Path:
    """`snapshot` laid out as huggingface_hub's cache under root/hf_home holds hub model someone/`repo` at COMMIT."""
    folder = root / "hf_home" / "hub" / f"models--someone--{repo}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    shutil.copytree(snapshot, folder / "snapshots" / COMMIT)
    return folder / "snapshots" / COMMIT


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tokenized data, the HF model as a directory, and the same laid out as huggingface_hub's cache."""
    root = tmp_path_factory.mktemp("init-from")
    tokenize_stories(root, "60KB", "--seed", "3")
    hf = hf_reference()
    hf.save_pretrained(root / "hf")
    hub_cache(root, "tiny-gpt2", root / "hf")
    return root, hf


def hf_eval_loss(hf: GPT2LMHeadModel, data: Path, block: int) -> float:
    """transformers' mean loss on the run's fixed val batches (the loop's step-0 eval)."""
    reader = open_reader(data, "val", BATCH, block, SEED)
    losses = []
    with torch.no_grad():
        for _ in range(EVAL_BATCHES):
            x, y = reader.next_batch()
            logits = hf(x).logits
            losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item())
    return sum(losses) / len(losses)


def step0_loss(run: Path) -> float:
    first = read_jsonl(run / "metrics.jsonl")[0]
    assert first["step"] == 0
    return first["val_loss"]


def assert_trained(run: Path, hf: GPT2LMHeadModel) -> dict[str, str]:
    records = read_jsonl(run / "metrics.jsonl")
    assert any(r["step"] == 3 and "loss" in r for r in records)
    model, meta = load_checkpoint_with_meta(run / "ckpt.safetensors")
    assert meta["step"] == "3"
    moved = (model.transformer.h[0].attn.c_attn.weight - hf.transformer.h[0].attn.c_attn.weight.t()).abs().max()
    assert moved > 0  # it trained
    return meta


def hub_env(root: Path, offline: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(root / "hf_home"), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"), COLUMNS="200")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def gpt2(*args, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A real process: huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when it is imported."""
    return subprocess.run([sys.executable, "-m", "gpt2cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_hub_name_starts_from_the_cached_snapshot(world):
    root, hf = world
    r = gpt2("train", "--init-from", "someone/tiny-gpt2", "--data", "data", "--out", "runs/hub", *FAST,
             cwd=root, env=hub_env(root))
    assert r.returncode == 0, r.stderr
    assert "using preset: finetune (the default with --init-from" in r.stderr
    run = root / "runs" / "hub"
    assert abs(step0_loss(run) - hf_eval_loss(hf, root / "data", 64)) <= 1e-5
    meta = assert_trained(run, hf)
    assert meta["init_from"] == f"someone/tiny-gpt2@{COMMIT}"  # pinned to the snapshot's commit
    assert json.loads(meta["train"])["init_from"] == f"someone/tiny-gpt2@{COMMIT}"

    # convert from-hf takes the same hub names through the same code.
    r = gpt2("convert", "from-hf", "someone/tiny-gpt2", "hub.safetensors", cwd=root, env=hub_env(root))
    assert r.returncode == 0, r.stderr
    ours, _ = load_checkpoint_with_meta(root / "hub.safetensors")
    idx = torch.randint(0, 50257, (2, 64))
    with torch.no_grad():
        assert (ours(idx) - hf(idx).logits).abs().max().item() <= 1e-5

    r = run_cli("train", "--out", "runs/hub", "--resume", "--steps", "5", cwd=root)
    assert r.code == 0, r.err
    _, meta = load_checkpoint_with_meta(run / "ckpt.safetensors")
    assert meta["step"] == "5" and meta["init_from"] == f"someone/tiny-gpt2@{COMMIT}"


def test_hf_directory_and_gpt2cli_checkpoint_start_from_the_same_weights(world):
    root, hf = world
    expected = hf_eval_loss(hf, root / "data", 64)
    r = run_cli("train", "--init-from", "hf", "--data", "data", "--out", "runs/dir", *FAST, cwd=root)
    assert r.code == 0, r.err
    assert abs(step0_loss(root / "runs/dir") - expected) <= 1e-5
    assert assert_trained(root / "runs/dir", hf)["init_from"] == "hf"

    assert run_cli("convert", "from-hf", "hf", "ours.safetensors", cwd=root).code == 0
    r = run_cli("train", "--init-from", "ours.safetensors", "--data", "data", "--out", "runs/ckpt", *FAST, cwd=root)
    assert r.code == 0, r.err
    assert abs(step0_loss(root / "runs/ckpt") - expected) <= 1e-5
    assert_trained(root / "runs/ckpt", hf)


def test_block_size_crops_the_position_table_and_dropout_is_settable(world):
    root, hf = world
    r = run_cli("train", "--init-from", "hf", "--data", "data", "--out", "runs/crop", "--block-size", "32",
                "--dropout", "0.0", *FAST, cwd=root)
    assert r.code == 0, r.err
    assert "position table cropped from 64 to 32 rows to fit --block-size 32" in r.err
    run = root / "runs/crop"
    assert abs(step0_loss(run) - hf_eval_loss(hf, root / "data", 32)) <= 1e-5
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["block_size"] == 32 and config["model"]["dropout"] == 0.0
    with safe_open(str(run / "ckpt.safetensors"), "pt") as f:
        assert f.get_tensor("transformer.wpe.weight").shape == (32, 32)

    r = run_cli("train", "--init-from", "hf", "--data", "data", "--out", "runs/long", "--block-size", "128",
                *FAST, cwd=root)
    assert r.code == 2 and r.err.splitlines()[-1] == "error: --block-size 128: larger than the context of hf (64 positions)"
    r = run_cli("train", "--init-from", "hf", "--data", "data", "--out", "runs/shape", "--set", "model.n_layer=4",
                *FAST, cwd=root)
    assert r.code == 2 and "model's shape comes from --init-from hf (n_layer=2)" in r.err


def test_offline_with_an_empty_cache_is_one_line(world, tmp_path):
    root, _ = world
    env = hub_env(tmp_path)  # an empty HF_HOME
    r = gpt2("train", "--init-from", "gpt2", "--data", root / "data", "--out", tmp_path / "run", *FAST,
             cwd=tmp_path, env=env)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert lines[-1].startswith("error: --init-from gpt2: not in the Hugging Face cache and the hub cannot be reached")
    assert "point --init-from at a local directory" in lines[-1] and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_pickle_only_sources_are_refused(world, tmp_path):
    root, _ = world
    (tmp_path / "bin-only").mkdir()
    (tmp_path / "bin-only" / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    shutil.copy(root / "hf" / "config.json", tmp_path / "bin-only")
    r = run_cli("train", "--init-from", "bin-only", "--data", root / "data", "--out", "run", *FAST, cwd=tmp_path)
    assert r.code == 2
    assert r.err.splitlines()[-1] == "error: bin-only: only pytorch_model.bin (a pickle) found; need model.safetensors"

    snap = tmp_path / "hf_home" / "hub" / "models--someone--pickled" / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text(COMMIT)
    shutil.copy(root / "hf" / "config.json", snap)
    r = gpt2("train", "--init-from", "someone/pickled", "--data", root / "data", "--out", "run", *FAST,
             cwd=tmp_path, env=hub_env(tmp_path))
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1] == (
        "error: someone/pickled: the hub repo has no model.safetensors (gpt2cli never loads pickle weights "
        "such as pytorch_model.bin)"
    )
