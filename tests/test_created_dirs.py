"""A command that fails takes away the empty folders it made for its output, and no others.

Tokenize and train are covered in test_outputs.py; here `gpt2 demo --out`,
`gpt2 convert to-hf DST_DIR`, `gpt2 convert from-hf` (which makes no folder)
and eval's n-gram cache dir.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest

from gpt2cli.checkpoint import save_checkpoint
from tests.conftest import run_cli, tiny_model


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_demo_refused_after_making_out_leaves_no_folder(tmp_path):
    # --corpus-size too small is found by the pipeline, after --out was made.
    (tmp_path / "kept").mkdir()
    r = run_cli("demo", "--out", tmp_path / "kept" / "a" / "b", "--corpus-size", "10KB")
    assert r.code == 2 and "--corpus-size 10000 bytes: too small" in r.err
    assert _tree(tmp_path) == ["kept"]


def test_demo_keeps_an_existing_empty_out(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli("demo", "--out", out, "--corpus-size", "10KB")
    assert r.code == 2
    assert _tree(tmp_path) == ["out"]


@pytest.fixture
def ckpt(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(tiny_model(0), path)
    return path


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("fails", ["save_safetensors", "write_text_atomic"])
def test_to_hf_failing_midway_leaves_no_folder(tmp_path, ckpt, monkeypatch, fails):
    import gpt2cli.convert

    monkeypatch.setattr(gpt2cli.convert, fails, _disk_full)
    r = run_cli("convert", "to-hf", ckpt, tmp_path / "new" / "hf")
    assert r.code == 2 and "no space left" in r.err and r.err.count("\n") == 1, r.err
    # Neither folder, nor the model.safetensors written before config.json failed.
    assert _tree(tmp_path) == ["ckpt.safetensors"]


def test_to_hf_failing_keeps_an_existing_folder(tmp_path, ckpt, monkeypatch):
    import gpt2cli.convert

    (tmp_path / "hf").mkdir()
    monkeypatch.setattr(gpt2cli.convert, "save_safetensors", _disk_full)
    r = run_cli("convert", "to-hf", ckpt, tmp_path / "hf")
    assert r.code == 2
    assert _tree(tmp_path) == ["ckpt.safetensors", "hf"]


def test_to_hf_then_from_hf_make_only_what_they_must(tmp_path, ckpt):
    assert run_cli("convert", "to-hf", ckpt, tmp_path / "a" / "hf").code == 0
    assert _tree(tmp_path / "a") == ["hf", "hf/config.json", "hf/model.safetensors"]
    # from-hf writes one file and makes no folders: a missing parent is refused.
    r = run_cli("convert", "from-hf", tmp_path / "a" / "hf", tmp_path / "x" / "y.safetensors")
    assert r.code == 2 and "does not exist" in r.err
    assert not (tmp_path / "x").exists()


def _interrupting(stage, done, total):
    raise KeyboardInterrupt


def test_ngram_cache_dir_made_for_a_failed_build_goes(tmp_path):
    from gpt2cli.analysis.ngram_index import build_cached_index

    tokens = np.arange(2_000, dtype=np.uint16) % 97
    root = tmp_path / "data" / ".ngram_index"
    (tmp_path / "data").mkdir()
    with pytest.raises(KeyboardInterrupt):
        build_cached_index(tokens, root, "k1", progress=_interrupting)
    assert _tree(tmp_path) == ["data"]
    # An existing cache dir (with an earlier index in it) stays.
    build_cached_index(tokens, root, "k0")
    with pytest.raises(KeyboardInterrupt):
        build_cached_index(tokens[:1_000], root, "k1", progress=_interrupting)
    assert _tree(root)[0] == "k0"
