"""Hugging Face weights sharded by transformers' `save_pretrained` (an index and
several model-0000K-of-0000N.safetensors files): `gpt2 convert from-hf` and
`gpt2 train --init-from` read them, from a directory or a hub name in the
cache, and give exactly transformers' logits and loss."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from gpt2cli.checkpoint import load_checkpoint, load_checkpoint_with_meta
from tests.conftest import run_cli, tokenize_stories
from tests.test_init_from import COMMIT, hf_eval_loss, hf_reference, hub_cache, hub_env, step0_loss
from tests.test_init_from import gpt2 as gpt2_process

pytestmark = pytest.mark.xdist_group("init-from")

ONE_STEP = ("--steps", "1", "--dtype", "fp32", "--device", "cpu", "--set", "train.sample_tokens=8")
INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tokenized data; the HF model saved in 50 KB shards, as a directory and in a hub cache."""
    root = tmp_path_factory.mktemp("hf-shards")
    tokenize_stories(root, "60KB", "--seed", "3")
    hf = hf_reference()
    hf.save_pretrained(root / "sharded", max_shard_size="50KB")
    assert not (root / "sharded" / "model.safetensors").exists()
    shards = set(json.loads((root / "sharded" / INDEX).read_text())["weight_map"].values())
    assert len(shards) >= 3 and all((root / "sharded" / s).is_file() for s in shards)
    hub_cache(root, "tiny-sharded", root / "sharded")
    partial = hub_cache(root, "partial", root / "sharded")
    (partial / max(shards)).unlink()
    return root, hf, sorted(shards)


def test_convert_from_sharded_directory_gives_hf_logits(world):
    root, hf, _ = world
    r = run_cli("convert", "from-hf", "sharded", "ours.safetensors", cwd=root)
    assert r.code == 0, r.err
    ours = load_checkpoint(root / "ours.safetensors")
    idx = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(idx) - hf(idx).logits).abs().max().item() <= 1e-5
    # The index itself names the same weights (as model.safetensors names a single file's).
    r = run_cli("convert", "from-hf", f"sharded/{INDEX}", "by-index.safetensors", cwd=root)
    assert r.code == 0, r.err
    by_index = load_checkpoint(root / "by-index.safetensors").state_dict()
    assert all(torch.equal(t, by_index[k]) for k, t in ours.state_dict().items())


def test_init_from_sharded_directory_starts_at_hf_loss(world):
    root, hf, _ = world
    r = run_cli("train", "--init-from", "sharded", "--data", "data", "--out", "runs/dir", *ONE_STEP, cwd=root)
    assert r.code == 0, r.err
    assert abs(step0_loss(root / "runs/dir") - hf_eval_loss(hf, root / "data", 64)) <= 1e-5


def test_init_from_sharded_hub_cache_starts_at_hf_loss(world):
    root, hf, _ = world
    r = gpt2_process("train", "--init-from", "someone/tiny-sharded", "--data", "data", "--out", "runs/hub",
                     *ONE_STEP, cwd=root, env=hub_env(root))
    assert r.returncode == 0, r.stderr
    assert abs(step0_loss(root / "runs/hub") - hf_eval_loss(hf, root / "data", 64)) <= 1e-5
    _, meta = load_checkpoint_with_meta(root / "runs/hub/ckpt.safetensors")
    assert meta["init_from"] == f"someone/tiny-sharded@{COMMIT}"


def test_a_shard_missing_from_the_hub_cache_is_one_line(world):
    root, _, shards = world
    r = gpt2_process("convert", "from-hf", "someone/partial", "partial.safetensors", cwd=root, env=hub_env(root))
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [
        f"error: someone/partial: shard {max(shards)} named in {INDEX} is not in the Hugging Face cache "
        "(offline? connect once to download it)"
    ]
    assert not (root / "partial.safetensors").exists()


def test_hub_fetches_the_shards_the_index_names_from_the_same_commit(world, monkeypatch, tmp_path):
    """Online, the shards are a second fetch pinned to the commit the index came from."""
    import huggingface_hub

    from gpt2cli import hub

    root, _, shards = world
    snapshot = tmp_path / COMMIT
    snapshot.mkdir()
    shutil.copy(root / "sharded" / "config.json", snapshot)
    shutil.copy(root / "sharded" / INDEX, snapshot)
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns, revision=None):
        calls.append((repo_id, sorted(allow_patterns), revision))
        for name in allow_patterns:  # what the hub would add to the snapshot
            if (root / "sharded" / name).is_file() and name != "config.json":
                shutil.copy(root / "sharded" / name, snapshot)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    folder, commit = hub.download("someone/tiny-sharded")
    assert (folder, commit) == (snapshot, COMMIT)
    assert calls == [("someone/tiny-sharded", sorted(hub.WANTED), None), ("someone/tiny-sharded", shards, COMMIT)]
