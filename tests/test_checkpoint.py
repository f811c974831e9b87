"""The one checkpoint format: round trip, atomic writes, refusing what is not ours."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from gpt2cli.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from gpt2cli.errors import UserError
from tests.conftest import run_cli, tiny_model


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(tiny_model(0), path, step=12, tokens_seen=3456, train={"lr": 1e-3})
    return path


def test_round_trip_keeps_weights_and_metadata(ckpt):
    model = tiny_model(0)
    loaded = load_checkpoint(ckpt)
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    meta = read_metadata(ckpt)
    assert meta["format"] == "gpt2cli/1" and meta["tokenizer"] == "gpt2"
    assert (meta["step"], meta["tokens_seen"]) == ("12", "3456")
    assert json.loads(meta["config"])["n_layer"] == 2 and json.loads(meta["train"]) == {"lr": 1e-3}


def test_loading_skips_weight_init(ckpt):
    """A loaded model's weights all come from the file, and loading never runs init on the meta
    device (nn.init.normal_ there imports torch._dynamo: ~3 s of every command's start-up)."""
    code = (
        "import sys; from gpt2cli.checkpoint import load_checkpoint; "
        f"load_checkpoint({str(ckpt)!r}); print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_uses_gpt2_names(ckpt):
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        names = set(f.keys())
    assert "transformer.wte.weight" in names and "transformer.h.1.attn.c_attn.weight" in names
    assert "lm_head.weight" not in names


def test_failed_rename_leaves_previous_checkpoint(ckpt, monkeypatch):
    before = ckpt.read_bytes()

    def crash(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(UserError, match="could not write"):
        save_checkpoint(tiny_model(5), ckpt, step=99)
    monkeypatch.undo()
    assert ckpt.read_bytes() == before
    assert [p.name for p in ckpt.parent.iterdir()] == [ckpt.name]
    load_checkpoint(ckpt)


def _cases(tmp_path, ckpt):
    raw = ckpt.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(raw[: len(raw) - 100])
    header_cut = tmp_path / "header_cut.safetensors"
    header_cut.write_bytes(raw[:50])
    foreign = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(foreign), metadata={"format": "pt"})
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(pickle.dumps({"weight": [1, 2, 3]}))
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    mismatch = tmp_path / "mismatch.safetensors"
    save_checkpoint(tiny_model(0), mismatch)
    from safetensors import safe_open

    with safe_open(str(mismatch), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    cfg = json.loads(meta["config"])
    cfg["n_layer"] = 3
    meta["config"] = json.dumps(cfg)
    save_file(tensors, str(mismatch), metadata=meta)
    return {
        truncated: "truncated",
        header_cut: "truncated",
        foreign: "not a gpt2cli checkpoint",
        pickled: "not safetensors",
        empty: "empty file",
        mismatch: "do not match its config",
        tmp_path / "missing.safetensors": "no such file",
        tmp_path: "is a directory",
    }


def test_bad_checkpoints_exit_2_with_one_line(tmp_path, ckpt):
    for path, message in _cases(tmp_path, ckpt).items():
        res = run_cli("inspect", "model", path)
        assert res.code == 2, (path, res.err)
        assert message in res.err and str(path) in res.err, res.err
        assert res.err.count("\n") == 1 and "Traceback" not in res.err
        res = run_cli("convert", "to-hf", path, tmp_path / "hf-out")
        assert res.code == 2 and message in res.err


def test_loader_never_unpickles(tmp_path, monkeypatch):
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(object()))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    with pytest.raises(UserError):
        load_checkpoint(evil)
