"""`gpt2 eval` end to end: an overfit tiny model, the JSON schema, the loss figures, bad input.

The overfit model trains on the built-in stories, tokenized by the data
package and then mapped onto a compact vocabulary (the ~450 token ids the
stories use), so that a 2-layer, 64-wide model memorises its training split
in a few seconds; the checkpoint and data dir name the compact tokenizer so
they match each other and nothing else.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import jsonschema
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt2cli.analysis.evaluate import load_schema
from gpt2cli.analysis.loss_eval import loss_verdict, mean_loss, window_batches
from gpt2cli.checkpoint import save_checkpoint
from gpt2cli.cli.eval_cmd import _render
from gpt2cli.config import ModelConfig
from gpt2cli.data.meta import read_meta, write_meta
from gpt2cli.data.reader import read_tokens
from gpt2cli.data.shards import TokenizeOptions, run_tokenize
from gpt2cli.data.writer import ShardWriter
from gpt2cli.model import GPT
from tests.conftest import run_cli, run_cli_process, tiny_model

COMPACT_VOCAB = 1024
SMALL_EVAL = [
    "--eval-tokens", "2048", "--num-samples", "8", "--max-new-tokens", "48",
    "--extract-windows", "32", "--prompt-tokens", "16", "--suffix-tokens", "16", "--device", "cpu",
]


def compact_data_dir(gpt2_dir, out):
    """The same documents and split, token ids renumbered 0..k-1 (EOT included)."""
    meta = read_meta(gpt2_dir)
    splits = {s: np.asarray(read_tokens(gpt2_dir, s)) for s in ("train", "val")}
    vocab = np.unique(np.concatenate(list(splits.values())))
    assert len(vocab) <= COMPACT_VOCAB
    out.mkdir()
    shards = []
    for split, tokens in splits.items():
        writer = ShardWriter(out, split, 1 << 20)
        writer.write(np.searchsorted(vocab, tokens).astype(np.uint16))
        shards += writer.close()
    eot = int(np.searchsorted(vocab, meta.eot_id))
    write_meta(out, meta.model_copy(update=dict(
        tokenizer="gpt2-compact", ranks_sha256="-", vocab_size=COMPACT_VOCAB, eot_id=eot, shards=shards
    )))
    return out


def overfit(data_dir, steps=300, batch=8, block=64, lr=3e-3, seed=0, vocab_size=COMPACT_VOCAB) -> GPT:
    """A minimal AdamW loop on random training windows (far past the point of overfitting by default)."""
    torch.manual_seed(seed)
    model = GPT(ModelConfig(n_layer=2, n_head=2, n_embd=64, block_size=block, vocab_size=vocab_size))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    tokens = np.asarray(read_tokens(data_dir, "train"), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        starts = rng.integers(0, len(tokens) - block - 1, size=batch)
        w = torch.from_numpy(np.stack([tokens[s : s + block + 1] for s in starts]))
        loss = model.loss(w[:, :-1], w[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny matmuls: a second thread only adds contention on a shared machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stories(tmp_path_factory):
    root = tmp_path_factory.mktemp("stories")
    gpt2_dir = root / "gpt2"
    # ~10 KB of stories: ~2.1k train tokens, ~0.4k val tokens
    run_tokenize(TokenizeOptions(builtin_stories=10_000, out_dir=gpt2_dir, val_fraction=0.2, workers=1, seed=0))
    return gpt2_dir, compact_data_dir(gpt2_dir, root / "compact")


@pytest.fixture(scope="module")
def overfit_run(stories):
    _, data = stories
    run_dir = data.parent / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 300, "loss": 0.3}\n')
    ckpt = save_checkpoint(overfit(data), run_dir / "ckpt.safetensors", tokenizer="gpt2-compact", step=300)
    return ckpt, data


@pytest.fixture(scope="module")
def untrained_ckpt(stories):
    """A compact-vocabulary checkpoint that matches the data, without training: for input checks."""
    _, data = stories
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=COMPACT_VOCAB))
    return save_checkpoint(model, data.parent / "untrained.safetensors", tokenizer="gpt2-compact"), data


@pytest.mark.slow
def test_overfit_model_extracts_train_not_val_and_flags_the_gap(overfit_run, tmp_path):
    ckpt, data = overfit_run
    out = tmp_path / "eval.json"
    res = run_cli("eval", ckpt, "--data", data, "--json", out, *SMALL_EVAL)
    assert res.code == 0, res.err
    result = json.loads(out.read_text())
    jsonschema.validate(result, load_schema())

    loss = result["loss"]
    # the val split (~400 tokens) is smaller than --eval-tokens: all of it, and as many train tokens
    assert loss["tokens"] == min(2048, read_meta(data).tokens["val"] - 1)
    assert loss["overfitting"] and loss["verdict"] == "OVERFITTING"
    assert loss["gap"] > 1.0  # far past overfitting: nats, not hundredths
    ex = result["memorization"]["extraction"]
    assert ex["train"]["windows"] == ex["val"]["windows"] == 32
    assert ex["train"]["share"] > ex["val"]["share"]
    assert ex["train"]["share"] >= 0.2
    assert result["memorization"]["verdict"] == "HIGH"

    # every area gets its verdict line, on stdout as well
    assert [line.split(":")[0] for line in result["verdicts"]] == ["loss", "repetition", "entropy", "memorization"]
    assert "loss: OVERFITTING" in res.out and "memorization: HIGH" in res.out
    assert len(result["samples"]) == 8 and len(result["entropy"]["samples"]["curve"]) <= 48
    # beside a run's metrics.jsonl, the JSON is also saved as RUN_DIR/eval.json
    assert json.loads((ckpt.parent / "eval.json").read_text()) == result


@pytest.mark.slow
def test_json_to_stdout_and_index_cache_reuse(overfit_run):
    ckpt, data = overfit_run
    first = run_cli("eval", ckpt, "--data", data, "--json", "-", *SMALL_EVAL)
    assert first.code == 0, first.err
    second = run_cli("eval", ckpt, "--data", data, "--json", "-", *SMALL_EVAL)
    result = json.loads(second.out)  # nothing but JSON on stdout
    jsonschema.validate(result, load_schema())
    assert result["memorization"]["index"]["built"] is False
    assert result["memorization"]["index"]["n_tokens"] == read_meta(data).tokens["train"]
    # fixed seeds: the same figures twice
    a = json.loads(first.out)
    for key in ("loss", "repetition", "memorization"):
        a[key].pop("index", None), result[key].pop("index", None)
        assert a[key] == result[key]


def test_gpt2_tokenizer_model_with_prompts_file(stories, tmp_path):
    gpt2_dir, _ = stories
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=64, vocab_size=50257))
    ckpt = save_checkpoint(model, tmp_path / "m.safetensors")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Once upon a time\n\nThe little dog\n")
    res = run_cli(
        "eval", ckpt, "--data", gpt2_dir, "--prompts", prompts, "--json", "-", "--eval-tokens", "256",
        "--num-samples", "3", "--max-new-tokens", "12", "--extract-windows", "4", "--prompt-tokens", "8",
        "--suffix-tokens", "8", "--top-k", "40", "--device", "cpu",
    )
    assert res.code == 0, res.err
    result = json.loads(res.out)
    jsonschema.validate(result, load_schema())
    assert [s["prompt"] for s in result["samples"]] == ["Once upon a time", "The little dog", "Once upon a time"]
    assert all(isinstance(s["text"], str) and s["tokens"] <= 12 for s in result["samples"])
    assert result["settings"]["top_k"] == 40
    # an untrained model generalises as badly as it recalls: no gap
    assert not result["loss"]["overfitting"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--eval-tokens", "0"], "--eval-tokens 0: must be positive"),
        (["--temperature", "-1"], "--temperature -1.0: must be >= 0"),
        (["--gap-margin", "-0.5"], "--gap-margin -0.5: must be >= 0"),
        (["--prompt-tokens", "40", "--suffix-tokens", "40"], "exceed the model's context of 64 tokens"),
        (["--prompts", "missing.txt"], "--prompts missing.txt: no such file"),
    ],
)
def test_bad_flags_exit_2(untrained_ckpt, args, message):
    ckpt, data = untrained_ckpt
    res = run_cli("eval", ckpt, "--data", data, "--device", "cpu", *args)
    assert res.code == 2
    assert message in res.err and "Traceback" not in res.err


def test_incompatible_data_and_missing_checkpoint_exit_2(stories, untrained_ckpt, tmp_path):
    gpt2_dir, _ = stories
    ckpt, data = untrained_ckpt
    res = run_cli("eval", ckpt, "--data", gpt2_dir, "--device", "cpu")
    assert res.code == 2 and "tokenizer 'gpt2'" in res.err
    res = run_cli("eval", tmp_path / "nope.safetensors", "--data", data)
    assert res.code == 2 and "no such file" in res.err
    res = run_cli("eval", ckpt, "--data", tmp_path / "nodata")
    assert res.code == 2 and "no such data directory" in res.err


def test_window_batches_count_exactly_n_targets():
    tokens = np.arange(1000) % 97
    batches = list(window_batches(tokens, n_tokens=150, block_size=32, batch_size=2, seed=0))
    assert sum(int((y >= 0).sum()) for _, y in batches) == 150
    for x, y in batches:
        assert x.shape[1] == 32
        for row_x, row_y in zip(x, y, strict=True):
            start = int(row_x[0])  # tokens[i] == i % 97: windows are contiguous slices
            want = (np.arange(start, start + 33)) % 97
            assert np.array_equal(row_x, want[:-1])
            kept = row_y >= 0
            assert np.array_equal(row_y[kept], want[1:][kept])


def test_mean_loss_matches_naive_cross_entropy():
    model = tiny_model(seed=1)
    tokens = np.random.default_rng(0).integers(0, 128, size=3000)
    got = mean_loss(model, tokens, n_tokens=200, batch_size=3, seed=5)
    # naive: full logits and per-token cross-entropy of the same windows, the first 200 targets
    losses = []
    for x, y in window_batches(tokens, 200, model.config.block_size, 3, 5):
        with torch.no_grad():
            logits = model(torch.from_numpy(x))
        ce = F.cross_entropy(logits.flatten(0, 1), torch.from_numpy(y).flatten(), reduction="none", ignore_index=-1)
        losses.append(ce[torch.from_numpy(y).flatten() >= 0])
    want = float(torch.cat(losses).mean())
    assert got == pytest.approx(want, rel=1e-5)


def test_loss_verdict():
    tight = {"gap_interval": [2.1, 2.3], "val_documents": 50, "train_documents": 200}
    v = loss_verdict(3.2, 1.0, 1000, 0.1, tight)
    assert v["overfitting"] and v["gap"] == pytest.approx(2.2)
    assert v["val_perplexity"] == pytest.approx(np.exp(3.2))
    assert v["line"] == (
        "loss: OVERFITTING — val 3.200 vs train 1.000 nats (gap +2.200, 95% interval [+2.100, +2.300] "
        "over 50 val and 200 train documents: all above margin 0.1)"
    )
    assert v["evidence"] == tight
    # issue 20's case: a gap of 0.163 measured on 62 val documents, whose interval reaches below the margin
    wide = loss_verdict(2.743, 2.580, 12720, 0.1, {"gap_interval": [0.02, 0.31], "val_documents": 62,
                                                   "train_documents": 300})
    assert not wide["overfitting"] and wide["verdict"] == "not enough evidence"
    assert "more val text would decide" in wide["line"]
    # one number without an interval never fires
    assert loss_verdict(3.2, 1.0, 1000, 0.1)["verdict"] == "not enough evidence"
    ok = loss_verdict(2.05, 2.0, 1000, 0.1)
    assert not ok["overfitting"] and ok["verdict"] == "ok"


def test_window_batches_tile_a_small_split_exactly_once():
    tokens = np.arange(101)
    batches = list(window_batches(tokens, n_tokens=10_000, block_size=32, batch_size=2, seed=0))
    counted = np.concatenate([y[y >= 0] for _, y in batches])
    assert sorted(counted.tolist()) == list(range(1, 101))  # every target once


@pytest.mark.parametrize("temperature, penalty", [(1.0, 1.0), (0.7, 1.3), (0.0, 1.0)])
def test_reading_entropies_match_the_samplers(temperature, penalty):
    """Reading a sample back teacher-forced gives the entropies the sampler reported while drawing it,
    past the end of the context window too (block 32, 12 + 40 tokens)."""
    from gpt2cli.analysis.evaluate import reading_entropies
    from gpt2cli.generation import SamplingConfig, complete

    model = tiny_model(seed=2)
    prompt = list(range(5, 17))
    cfg = SamplingConfig(max_new_tokens=40, temperature=temperature, repetition_penalty=penalty, seed=3)
    (done,) = complete(model, [prompt], cfg)
    got = reading_entropies(model, prompt, done.tokens, temperature, penalty)
    assert len(got) == len(done.tokens) == 40
    assert got == pytest.approx(done.entropies, abs=1e-4)


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson's score interval, written out from its formula (Wilson 1927)."""
    p = k / n
    centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


def small_eval(ckpt, data, out, samples: int = 2, new_tokens: int = 8, windows: int = 4) -> list:
    """`gpt2 eval` arguments for a run of seconds on the CPU."""
    return ["eval", ckpt, "--data", data, "--json", out, "--eval-tokens", "512", "--num-samples", str(samples),
            "--max-new-tokens", str(new_tokens), "--extract-windows", str(windows), "--prompt-tokens", "8",
            "--suffix-tokens", "8", "--device", "cpu"]  # fmt: skip


def test_tables_show_the_intervals_of_the_json(untrained_ckpt, tmp_path):
    """Each rate and gap in the tables carries the 95% interval the verdicts and --json carry."""
    ckpt, data = untrained_ckpt
    out = tmp_path / "eval.json"
    res = run_cli(*small_eval(ckpt, data, out, samples=4, new_tokens=24, windows=8))
    assert res.code == 0, res.err
    result = json.loads(out.read_text())
    jsonschema.validate(result, load_schema())  # the schema is unchanged: the JSON still fits it
    cells = [c.strip() for line in res.out.splitlines() for c in line.split("│")]

    loss, ev = result["loss"], result["loss"]["evidence"]
    lo, hi = ev["gap_interval"]
    assert f"{loss['gap']:+.3f} [{lo:+.3f}, {hi:+.3f}]" in cells
    lo, hi = ev["val_interval"]
    assert f"{loss['val_loss']:.3f} [{lo:.3f}, {hi:.3f}]" in cells

    loop = result["repetition"]["evidence"]["loop"]
    lo, hi = _wilson(loop["count"], loop["n"])
    assert f"{loop['rate']:.0%} [{100 * lo:.0f}, {100 * hi:.0f}]" in cells
    lo, hi = _wilson(loop["reference_count"], loop["reference_n"])
    assert f"{loop['reference_rate']:.0%} [{100 * lo:.0f}, {100 * hi:.0f}]" in cells

    ex = result["memorization"]["extraction"]
    for split in ("train", "val"):
        k, n = ex[split]["extracted"], ex[split]["windows"]
        lo, hi = _wilson(k, n)
        assert f"{k / n:.1%} [{100 * lo:.1f}, {100 * hi:.1f}] of {n}" in cells, split

    # The n-gram share the memorization verdict weighs (its longest n) carries its bootstrap interval.
    mem = result["memorization"]
    share, ref = mem["samples"]["per_n"]["8"]["share"], mem["reference"]["per_n"]["8"]["share"]
    mem["evidence"]["overlap"] = {"n": 8, "share": share, "interval": [0.0123, 0.4567],
                                  "reference_share": ref, "reference_interval": [0.0011, 0.0022]}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        _render(result)
    row = next(line for line in buf.getvalue().splitlines() if "8-grams found in train" in line)
    assert f"{share:.1%} [1.2, 45.7]" in row and f"{ref:.1%} [0.1, 0.2]" in row, row


def test_tables_keep_their_labels_where_no_stream_is_a_terminal(untrained_ckpt, tmp_path):
    """In a CI log or a script's subprocess rich would fall back to 80 columns and crop
    the loss table's first column to "cro…"; such output gets 120 unless COLUMNS says otherwise."""
    ckpt, data = untrained_ckpt
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = run_cli_process(*small_eval(ckpt, data, tmp_path / "e.json"), stdin=subprocess.DEVNULL, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    labels = [line.split("│")[1].strip() for line in proc.stdout.splitlines() if line.count("│") > 2]
    assert "cross-entropy" in labels and "perplexity" in labels, proc.stdout
    code = "from gpt2cli.cli.common import err_console, out_console; print(out_console.width, err_console.width)"
    for columns, expected in ((None, "120 120"), ("50", "50 50")):
        run_env = env if columns is None else {**env, "COLUMNS": columns}
        widths = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True,
                                text=True, env=run_env, timeout=60)  # fmt: skip
        assert widths.stdout.split() == expected.split(), widths.stderr


def test_verdict_lines_show_brackets_as_written(untrained_ckpt, tmp_path):
    """A verdict's `[n/a]` interval (or any [bracketed] text) is printed, not taken for rich markup."""
    ckpt, data = untrained_ckpt
    out = tmp_path / "eval.json"
    res = run_cli(*small_eval(ckpt, data, out))
    assert res.code == 0, res.err
    result = json.loads(out.read_text())
    result["verdicts"] = [
        "entropy: ok — last quarter 6.30 nats; 1.00 of real text's (95% [n/a]), collapse below 0.5",
        "loss: OVERFITTING — [bold]not markup[/bold]",
    ]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        _render(result)
    assert "1.00 of real text's (95% [n/a])" in buf.getvalue()
    # A one-document val split: its table row says "window", not "windows".
    result["repetition"]["evidence"]["loop"]["reference_n"] = 1
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        _render(result)
    assert "… in 1 real-text window " in buf.getvalue()
    assert "loss: OVERFITTING — [bold]not markup[/bold]" in buf.getvalue()
