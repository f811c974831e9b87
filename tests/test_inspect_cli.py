"""`gpt2 inspect heads` and `gpt2 inspect attention` end to end (in-process CLI)."""

from __future__ import annotations

import json

import pytest

from gpt2cli.checkpoint import save_checkpoint
from tests.conftest import run_cli, tiny_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STORY = (
    "Once upon a time there was a little dog named Sam. Sam liked to run in the park. "
    "One day Sam saw a big red ball. He ran to the ball and pushed it with his nose. "
    "The ball rolled down the hill and Sam ran after it, barking with joy.\n"
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    ckpt = save_checkpoint(
        tiny_model(0, vocab_size=50257, block_size=32), root / "gpt2.safetensors"
    )
    small = save_checkpoint(
        tiny_model(1, vocab_size=128, block_size=32), root / "small.safetensors"
    )
    text = root / "story.txt"
    text.write_text(STORY * 6, encoding="utf-8")
    return root, ckpt, small, text


def test_heads_writes_table_json_and_png(files):
    root, ckpt, _, text = files
    out_json, out_png = root / "heads.json", root / "heads.png"
    r = run_cli(
        "inspect",
        "heads",
        ckpt,
        "--text",
        text,
        "--tokens",
        "256",
        "--ablation-tokens",
        "64",
        "--json",
        out_json,
        "--png",
        out_png,
    )
    assert r.code == 0, r.err
    for head in ("L0H0", "L0H1", "L1H0", "L1H1"):
        assert head in r.out
    assert "Gini" in r.out or "nil everywhere" in r.out
    assert "idle" in r.out
    assert "ablation on 64 of 256 tokens (2 of 8 sequences" in r.err
    doc = json.loads(out_json.read_text())
    assert doc["tokens"] == 256 and doc["seq_len"] == 32 and doc["sequences"] == 8
    assert doc["ablation_tokens"] == 64
    assert len(doc["heads"]) == 4
    assert set(doc["grids"]) >= {
        "entropy",
        "sink",
        "previous_token",
        "induction",
        "zero_importance",
    }
    for rec in doc["heads"]:
        z = rec["zero_ablation"]
        assert z["delta"] == pytest.approx(z["loss"] - doc["baseline_loss"])
        assert 0.0 <= rec["sink"] <= 1.0 and 0.0 <= rec["entropy"] <= 1.0 + 1e-6
    assert {"gini", "top_shares", "idle", "verdicts", "lorenz"} <= set(doc["inequality"])
    assert out_png.read_bytes()[:8] == PNG_MAGIC
    assert not list(root.glob(".*.tmp-*"))  # written atomically, nothing left behind


def test_heads_json_to_stdout_only(files):
    _, ckpt, _, text = files
    r = run_cli("inspect", "heads", ckpt, "--text", text, "--tokens", "64", "--json", "-")
    assert r.code == 0, r.err
    doc = json.loads(r.out)  # nothing but JSON on stdout
    assert doc["n_layer"] == 2 and doc["n_head"] == 2


def test_heads_on_a_short_text_says_what_it_got(files, tmp_path):
    """Fewer tokens than asked for: the note counts what there was, in words that agree with the count."""
    _, ckpt, _, _ = files
    short = tmp_path / "short.txt"
    short.write_text(STORY * 2, encoding="utf-8")  # 116 tokens: 3 windows of 32 + 1
    r = run_cli("inspect", "heads", ckpt, "--text", short, "--tokens", "256")
    assert r.code == 0, r.err
    assert "(3 sequences of 32)" in " ".join(r.err.split())
    short.write_text(STORY, encoding="utf-8")  # 58 tokens: 1 window
    r = run_cli("inspect", "heads", ckpt, "--text", short, "--tokens", "256")
    assert r.code == 0, r.err
    assert "(1 sequence of 32)" in " ".join(r.err.split())


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--text", "{small_text}", "--data", "{root}"], "not both"),
        (["--text", "{root}/missing.txt"], "missing.txt: no such file"),
        (["--text", "{small_text}", "--seq-len", "64"], "--seq-len 64"),
        (["--text", "{small_text}", "--tokens", "0"], "--tokens 0"),
        (["--text", "{small_text}", "--png", "{root}/no/such/dir/h.png"], "does not exist"),
    ],
)
def test_heads_bad_input_is_one_line_exit_2(files, extra, needle):
    root, ckpt, _, text = files
    args = [a.format(small_text=text, root=root) for a in extra]
    r = run_cli("inspect", "heads", ckpt, *args)
    assert r.code == 2
    assert needle in r.err and "Traceback" not in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_heads_text_outside_the_vocab_is_a_clear_error(files):
    _, _, small, text = files
    r = run_cli("inspect", "heads", small, "--text", text)
    assert r.code == 2
    assert "--text" in r.err and "vocab_size 128" in r.err


def test_heads_without_data_or_ckpt_names_what_is_missing(files, tmp_path):
    _, ckpt, _, _ = files
    r = run_cli("inspect", "heads", ckpt, cwd=tmp_path)
    assert r.code == 2 and "no --data given" in r.err
    r = run_cli("inspect", "heads", cwd=tmp_path)
    assert r.code == 2 and "no CKPT given and no checkpoint under ./runs" in r.err
    r = run_cli("inspect", "heads", tmp_path / "nope.safetensors", "--text", "x")
    assert r.code == 2 and "nope.safetensors: no such file" in r.err


def test_heads_on_a_data_dir(files, tmp_path):
    """--data reads the val split through gpt2cli.data.reader; without it, ./data is the default."""
    pytest.importorskip("gpt2cli.data.reader")
    root, ckpt, _, text = files
    story = tmp_path / "stories.txt"
    story.write_text("\n<|endoftext|>\n".join([STORY * 3] * 16), encoding="utf-8")
    r = run_cli("tokenize", story, "-o", tmp_path / "data" / "stories", "--val-fraction", "0.5")
    if r.code != 0:
        pytest.skip(f"gpt2 tokenize unavailable: {r.err.strip()}")
    r = run_cli(
        "inspect",
        "heads",
        ckpt,
        "--data",
        tmp_path / "data" / "stories",
        "--tokens",
        "64",
        "--json",
        "-",
    )
    assert r.code == 0, r.err
    assert json.loads(r.out)["tokens"] == 64
    r = run_cli("inspect", "heads", ckpt, "--tokens", "64", "--json", "-", cwd=tmp_path)
    assert r.code == 0, r.err
    assert "using data: data/stories (the only data dir under ./data)" in r.err
    assert json.loads(r.out)["source"] == "data/stories (val split)"


def test_attention_png_and_table(files):
    root, ckpt, _, _ = files
    out = root / "attn.png"
    r = run_cli(
        "inspect",
        "attention",
        ckpt,
        "The cat sat. The cat",
        "--layer",
        "1",
        "--head",
        "0",
        "--png",
        out,
    )
    assert r.code == 0, r.err
    assert out.read_bytes()[:8] == PNG_MAGIC
    r = run_cli("inspect", "attention", ckpt, "The cat sat", "--layer", "0", "--head", "1")
    assert r.code == 0, r.err
    assert "·cat" in r.out and "·sat" in r.out  # tokens decoded, the leading space shown


@pytest.mark.parametrize(
    "text, layer, head, needle",
    [
        ("hi there", "2", "0", "--layer 2"),
        ("hi there", "0", "-1", "--head -1"),
        ("", "0", "0", "empty"),
        ("word " * 40, "0", "0", "context of 32"),
    ],
)
def test_attention_bad_input(files, text, layer, head, needle):
    _, ckpt, _, _ = files
    r = run_cli("inspect", "attention", ckpt, text, "--layer", layer, "--head", head)
    assert r.code == 2 and needle in r.err


def test_help_has_examples():
    for cmd in ("heads", "attention"):
        r = run_cli("inspect", cmd, "--help")
        assert r.code == 0 and "Example" in r.out
