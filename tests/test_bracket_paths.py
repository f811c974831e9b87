"""Paths with [brackets] are shown as they are: rich would read `[v2]` as a style tag and drop it."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console

from gpt2cli.cli.demo import _samples_table
from tests.conftest import run_cli, tiny_preset

EVAL = ("--device", "cpu", "--dtype", "fp32", "--prompt-tokens", "8", "--suffix-tokens", "8")


def test_bracketed_names_survive_notes_and_wrote_lines(tmp_path, one_thread):
    (tmp_path / "p.toml").write_text(tiny_preset(steps=2, eval_every=2, eval_samples=1, sample_tokens=4))
    r = run_cli("tokenize", "--builtin-stories", "40KB", "-o", "data/d[v2]", "--workers", "1", cwd=tmp_path)
    assert r.code == 0, r.err

    # No --data: the note names the default it used, brackets and all.
    r = run_cli("train", "--preset", "p.toml", "--out", "runs/r[bold]", cwd=tmp_path)
    assert r.code == 0, r.err
    assert "d[v2]" in r.err

    ckpt = "runs/r[bold]/ckpt.safetensors"
    r = run_cli("convert", "to-hf", ckpt, "hf[v2]", cwd=tmp_path)
    assert r.code == 0, r.err
    assert "wrote hf[v2]/config.json and hf[v2]/model.safetensors" in r.err
    (tmp_path / "back[").mkdir()  # the path holds "[/x]", a closing tag to rich
    r = run_cli("convert", "from-hf", "hf[v2]", "back[/x].safetensors", cwd=tmp_path)
    assert r.code == 0, r.err
    assert "wrote back[/x].safetensors: 2 layers" in r.err
    r = run_cli("eval", ckpt, "--data", "data/d[v2]", *EVAL, "--num-samples", "2", "--max-new-tokens", "8",
                "--eval-tokens", "512", "--extract-windows", "2", "--json", "e[v2].json", cwd=tmp_path)
    assert r.code == 0, r.err
    assert "wrote e[v2].json" in r.err and (tmp_path / "e[v2].json").is_file()

    (tmp_path / "h[").mkdir()  # so that the path holds "[/x]", a closing tag to rich
    r = run_cli("inspect", "heads", ckpt, "--data", "data/d[v2]", "--device", "cpu", "--tokens", "64",
                "--json", "h[/x].json", cwd=tmp_path)
    assert r.code == 0, r.err
    assert "wrote h[/x].json" in r.err and (tmp_path / "h[/x].json").is_file()

    # No --ckpt: the newest checkpoint under ./runs, named in the note.
    r = run_cli("generate", "Once", "--max-new-tokens", "2", "--device", "cpu", cwd=tmp_path)
    assert r.code == 0, r.err
    assert "runs/r[bold]/ckpt.safetensors" in r.err


def test_demo_samples_table_shows_bracketed_text_as_words():
    """A sample that reads like a closing tag ("[/quote]") once crashed rich's markup parser."""
    sample = SimpleNamespace(prompt="Once [red]upon", text="a [/quote] time [bold]x")
    before = SimpleNamespace(step=0, val_loss=10.8, samples=[sample])
    after = SimpleNamespace(step=100, val_loss=2.6, samples=[sample])
    out = io.StringIO()
    Console(file=out, width=200).print(_samples_table(before, after))
    assert "Once [red]upon" in out.getvalue() and "a [/quote] time [bold]x" in out.getvalue()
