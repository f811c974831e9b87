"""Presets and config validation: one clear line and exit 2 for invalid values."""

from __future__ import annotations

import zipfile

import pytest

from gpt2cli.config import ModelConfig, load_run_config
from gpt2cli.errors import UserError
from gpt2cli.preset_files import preset_names
from tests.conftest import REPO, run_cli


def test_builtin_presets_have_the_documented_shapes():
    shapes = {name: load_run_config(name).model for name in ("tiny", "small", "medium", "large")}
    got = {k: (m.n_layer, m.n_head, m.n_embd) for k, m in shapes.items()}
    assert got == {"tiny": (4, 4, 256), "small": (12, 12, 768), "medium": (24, 16, 1024), "large": (36, 20, 1280)}


def test_user_preset_file_and_overrides(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[model]\nn_layer = 2\nn_head = 2\nn_embd = 64\n[train]\nsteps = 7\n')
    cfg = load_run_config(str(path), ["model.dropout=0.1", "train.lr=3e-4", "model.attention=gated"])
    assert (cfg.model.n_layer, cfg.model.dropout, cfg.train.steps, cfg.train.lr) == (2, 0.1, 7, 3e-4)
    assert cfg.model.attention == "gated"


@pytest.mark.parametrize(
    "body,message",
    [
        ("[model]\nn_embd = 100\nn_head = 3\n", "divisible by n_head"),
        ("[model]\nn_layer = 0\n", "model.n_layer"),
        ("[model]\nn_layers = 4\n", "model.n_layers: unknown key"),
        ('[model]\nattention = "sparse"\n', "unknown attention kind 'sparse'"),
        ("[train]\nbatch_size = -1\n", "train.batch_size"),
        ("[model\n", "not valid TOML"),
    ],
)
def test_invalid_presets_exit_2_with_one_line(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    res = run_cli("inspect", "model", "--preset", str(path))
    assert res.code == 2
    assert message in res.err
    assert res.err.count("\n") == 1 and "Traceback" not in res.err


def test_unknown_preset_name_exits_2():
    res = run_cli("inspect", "model", "--preset", "huge")
    assert res.code == 2 and "--preset huge" in res.err


def test_help_and_errors_list_every_preset_in_the_presets_dir():
    """The names come from presets/*.toml (xl and finetune included), smallest model first."""
    assert preset_names() == ("tiny", "small", "medium", "large", "xl", "finetune")
    assert set(preset_names()) == {p.stem for p in (REPO / "presets").glob("*.toml")}
    listed = ", ".join(preset_names())
    for args in (("train", "--help"), ("inspect", "model", "--help")):
        res = run_cli(*args)
        assert res.code == 0
        assert f"{listed} or a FILE.toml" in " ".join(res.out.replace("│", " ").split()), args
    res = run_cli("inspect", "model", "--preset", "huge")
    assert f"not a preset ({listed})" in res.err


def test_model_config_rejects_bad_values_directly():
    with pytest.raises(ValueError):
        ModelConfig(n_embd=30, n_head=4)
    with pytest.raises(UserError):
        load_run_config("tiny", ["model.nope=1"])


@pytest.mark.slow
def test_wheel_ships_presets_and_tokenizer_ranks(tmp_path):
    import subprocess
    import sys

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("gpt2cli-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for preset in ("tiny", "small", "medium", "large"):
        assert f"gpt2cli/presets/{preset}.toml" in names
    assert "gpt2cli/assets/gpt2.tiktoken" in names
