"""Issue 20, Done-when 1: on checkpoints built from real stories, every `gpt2 eval` verdict is the expected one.

The panel, each from the start of `../shared/data/tinystories-12k.txt`
(skipped with a reason where the file is absent):
- random init: nothing is wrong yet (every verdict "ok");
- a short healthy run on ~150 KB of stories: still "ok" everywhere;
- an overfitted run on a 6 KB slice, trained far past its val minimum: the
  gap (OVERFITTING) and extraction of train windows (memorization HIGH);
- greedy decoding of an undertrained model: repetition loops (HIGH) with
  entropy collapse, and nothing else.

The stories are tokenized by the data package and renumbered onto a compact
vocabulary (the ids these stories use), so that the models (2 layers, 64 wide)
train in seconds; the checkpoints and data dirs name the compact tokenizer.

Also here: how often real stories trigger the loop detector (a phrase said
three times for emphasis must not count as a degenerate loop).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gpt2cli.analysis.evaluate import EvalOptions, run_eval
from gpt2cli.analysis.text_metrics import longest_loop
from gpt2cli.checkpoint import save_checkpoint
from gpt2cli.data.meta import read_meta, write_meta
from gpt2cli.data.reader import read_tokens
from gpt2cli.data.shards import TokenizeOptions, run_tokenize
from gpt2cli.data.writer import ShardWriter
from gpt2cli.model import GPT
from tests.test_eval_cli import overfit

STORIES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinystories-12k.txt"
EOT_LINE = "<|endoftext|>\n"

pytestmark = pytest.mark.skipif(
    not STORIES.is_file(), reason=f"needs the real stories at {STORIES} (see ../shared/data/README.md)"
)


def first_stories(n_bytes: int) -> str:
    """Whole stories from the start of the file, about n_bytes of them."""
    with STORIES.open(encoding="utf-8") as f:
        text = f.read(n_bytes + 4096)
    return text[: text.rfind(EOT_LINE, 0, n_bytes) + len(EOT_LINE)]


def compact_data(root: Path, name: str, n_bytes: int, val_fraction: float) -> Path:
    """The first n_bytes of stories tokenized, ids renumbered 0..k-1 (EOT included).

    Ids seen fewer than twice in the train split become one shared <unk> id
    (as word-level corpora replace their rare words, Mikolov et al.'s PTB):
    otherwise every word that only the val stories use is an id the model
    was taught never to predict, and a few such words add a val-train gap
    that has nothing to do with overfitting.
    """
    src = root / f"{name}.txt"
    src.write_text(first_stories(n_bytes), encoding="utf-8")
    gpt2_dir, out = root / f"{name}-gpt2", root / name
    run_tokenize(TokenizeOptions(inputs=[src], out_dir=gpt2_dir, val_fraction=val_fraction, workers=1, seed=0))
    meta = read_meta(gpt2_dir)
    splits = {s: np.asarray(read_tokens(gpt2_dir, s)) for s in ("train", "val")}
    counts = np.bincount(splits["train"], minlength=meta.eot_id + 1)
    vocab = np.union1d(np.flatnonzero(counts >= 2), [meta.eot_id])
    unk = len(vocab)
    out.mkdir()
    shards = []
    for split, tokens in splits.items():
        pos = np.minimum(np.searchsorted(vocab, tokens), unk - 1)
        ids = np.where(vocab[pos] == tokens, pos, unk)
        writer = ShardWriter(out, split, 1 << 22)
        writer.write(ids.astype(np.uint16))
        shards += writer.close()
    eot = int(np.searchsorted(vocab, meta.eot_id))
    write_meta(out, meta.model_copy(update=dict(
        tokenizer="gpt2-compact", ranks_sha256="-", vocab_size=-(-(unk + 1) // 64) * 64, eot_id=eot, shards=shards
    )))
    return out


def train(data_dir: Path, steps: int, lr: float, seed: int = 0, block: int = 64, batch: int = 8) -> GPT:
    """AdamW on random training windows (steps = 0: the random init)."""
    return overfit(data_dir, steps=steps, batch=batch, block=block, lr=lr, seed=seed,
                   vocab_size=read_meta(data_dir).vocab_size)


EVAL = dict(eval_tokens=8192, num_samples=32, sample_prompt_tokens=16, max_new_tokens=48,
            extract_windows=48, prompt_tokens=16, suffix_tokens=16)


@pytest.fixture(scope="module")
def panel(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only adds contention
    try:
        root = tmp_path_factory.mktemp("panel")
        stories = compact_data(root, "stories", 300_000, 0.15)  # ~55k train tokens, ~50 val stories
        small = compact_data(root, "slice", 8_000, 0.3)  # ~1.3k train tokens
        healthy = train(stories, 80, 5e-3)  # 40k tokens: under one epoch
        runs = {
            "random init": (train(stories, 0, 1e-3), stories, {}),
            "healthy": (healthy, stories, {}),
            "overfitted": (train(small, 300, 5e-3), small, {}),  # each train token seen ~100 times
            "greedy, undertrained": (healthy, stories, {"temperature": 0.0}),
        }
        results = {}
        for name, (model, data, extra) in runs.items():
            ckpt = save_checkpoint(model, root / f"{name.replace(' ', '_')}.safetensors", tokenizer="gpt2-compact")
            results[name] = run_eval(ckpt, data, EvalOptions(**EVAL, **extra), device="cpu")
        return results
    finally:
        torch.set_num_threads(threads)


EXPECTED = {
    "random init": {"loss": "ok", "repetition": "ok", "entropy": "ok", "memorization": "ok"},
    "healthy": {"loss": "ok", "repetition": "ok", "entropy": "ok", "memorization": "ok"},
    # The overfitted model loops in 4 of its 32 samples (12%; the seed saw loops from overfitted checkpoints
    # too), but its data dir holds 3 val stories: the real-text rate (0/3, 95% up to 56%) is too uncertain
    # to call the rise beyond chance, and the verdict says so.
    "overfitted": {"loss": "OVERFITTING", "repetition": "not enough evidence", "entropy": "ok",
                   "memorization": "HIGH"},
    # The loops come from argmax alone: the undertrained model's distributions stay as spread out as when
    # it reads real text, so the entropy verdict is rightly "ok" (the seed saw loops *with* collapse later on).
    "greedy, undertrained": {"loss": "ok", "repetition": "HIGH", "entropy": "ok", "memorization": "ok"},
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_verdict_is_the_expected_one(panel, name):
    result = panel[name]
    got = {area: result[area]["verdict"] for area in EXPECTED[name]}
    assert got == EXPECTED[name], "\n".join(result["verdicts"])


def test_verdicts_state_their_evidence(panel):
    for result in panel.values():
        loss = result["loss"]["evidence"]
        assert loss["val_documents"] >= 3 and loss["gap_interval"][0] <= result["loss"]["gap"] <= loss["gap_interval"][1]
        loop = result["repetition"]["evidence"]["loop"]
        assert loop["n"] == 32 and loop["reference_n"] == result["loss"]["evidence"]["val_documents"]
        assert "95%" in result["loss"]["line"] and "95%" in result["repetition"]["line"]
        assert "95%" in result["memorization"]["line"]


# -- the loop detector on real text ------------------------------------------------------------


def test_real_stories_almost_never_loop():
    from gpt2cli.tokenizer import get_tokenizer

    enc = get_tokenizer()
    stories = first_stories(1_500_000).split(EOT_LINE)
    windows = []
    for story in stories:
        tokens = enc.encode_ordinary(story)
        windows += [tokens[i : i + 128] for i in range(0, len(tokens), 128) if len(tokens) - i >= 32]
    loops = sum(longest_loop(w) is not None for w in windows)
    emphasis = sum(longest_loop(w, min_repeats=3, min_tokens=1) is not None for w in windows)
    # 1.5 MB of stories: ~2,900 windows; phrases said three times ("up, up, up") are there, and are not loops
    assert len(windows) > 2500 and emphasis >= 1
    assert loops / len(windows) <= 0.001, (loops, len(windows))
