"""`gpt2 generate`'s timing: the stderr line and the JSON `timing` object agree with the tokens made.

Consistency of the numbers only, never their speed.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from gpt2cli.checkpoint import save_checkpoint
from gpt2cli.cli.generate import Timing
from gpt2cli.config import ModelConfig
from gpt2cli.model import GPT
from tests.conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

# The CPU, also on a GPU machine: fp32 there, so the modes' tokens compare exactly.
CPU = ("--device", "cpu")
LINE = re.compile(r"(\d+) tokens in ([\d.]+) s \(first token after ([\d.]+) s, then ([\d.]+) tokens/s\)")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=50257))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "random.safetensors")


class FakeClock:
    def __init__(self, times):
        self.times = iter(times)

    def __call__(self):
        return next(self.times)


def timing_with(times, steps):
    timing = Timing()
    timing.clock = FakeClock(times)
    timing.start = timing.clock()
    for n in steps:
        timing.step(n)
    timing.finish()
    return timing


def test_timing_arithmetic():
    # Start at 10 s; 3 tokens (a batch of 3) at 10.5 s, then 3 + 2 more by 11.5 s; finish at 11.5 s.
    t = timing_with([10.0, 10.5, 11.0, 11.5, 11.5], [3, 3, 2])
    assert t.tokens == 8 and t.first_s == pytest.approx(0.5) and t.total_s == pytest.approx(1.5)
    assert t.after_first() == pytest.approx(5 / 1.0)
    assert t.line() == "8 tokens in 1.50 s (first token after 0.50 s, then 5.0 tokens/s)"
    rec = t.record()
    assert rec["tokens_per_s"] == pytest.approx(8 / 1.5, rel=1e-3)
    assert rec["time_to_first_token_s"] == pytest.approx(0.5)
    # One step only: no rate after the first token.
    one = timing_with([0.0, 0.25, 0.25], [1])
    assert one.after_first() is None and one.record()["tokens_per_s_after_first"] is None
    assert one.line() == "1 tokens in 0.25 s (first token after 0.25 s)"


def test_stream_prints_time_to_first_token_and_rate(ckpt):
    res = run_cli("generate", "Hi", "--ckpt", ckpt, "--max-new-tokens", "12", "--seed", "1", "--num-samples", "2", *CPU)
    assert res.code == 0, res.err
    m = LINE.search(res.err)
    assert m, res.err
    n, total, first, rate = int(m[1]), float(m[2]), float(m[3]), float(m[4])
    assert n <= 24 and n >= 2  # 2 samples, up to 12 tokens each (one may stop at <|endoftext|>)
    assert first <= total and rate > 0


@pytest.mark.parametrize("decode", ["plain", "static"])
def test_json_timing_is_consistent_with_the_samples(ckpt, decode):
    args = ("generate", "Hi", "--ckpt", ckpt, "--max-new-tokens", "10", "--seed", "2", "--num-samples", "3", "--json", *CPU)
    res = run_cli(*args, "--decode", decode)
    assert res.code == 0, res.err
    record = json.loads(res.out)
    timing = record["timing"]
    made = sum(len(s["tokens"]) for s in record["samples"])
    assert record["settings"]["decode"] == decode
    assert timing["new_tokens"] == made
    assert 0 < timing["time_to_first_token_s"] <= timing["total_s"]
    assert timing["tokens_per_s"] == pytest.approx(made / timing["total_s"], rel=1e-3)
    # The first step drew one token per sample; the rate after it covers the rest.
    rest = made - 3
    after = timing["tokens_per_s_after_first"]
    assert after == pytest.approx(rest / (timing["total_s"] - timing["time_to_first_token_s"]), rel=1e-3)
    assert LINE.search(res.err)  # the same line on stderr, stdout stays pure JSON


def test_decode_modes_give_the_same_tokens_from_the_command_line(ckpt):
    args = ("generate", "Hi", "--ckpt", ckpt, "--max-new-tokens", "40", "--temperature", "0", "--json", *CPU)
    plain = json.loads(run_cli(*args, "--decode", "plain").out)["samples"]
    static = json.loads(run_cli(*args, "--decode", "static").out)["samples"]
    assert [s["tokens"] for s in plain] == [s["tokens"] for s in static]


@pytest.mark.parametrize(
    "value, message",
    [
        ("fast", "--decode fast: expected auto, plain, static, graph"),
        ("graph", "--decode graph: needs a CUDA device (the model is on cpu); use static or plain"),
    ],
)
def test_bad_decode_exits_2_with_one_line(ckpt, value, message):
    res = run_cli("generate", "Hi", "--ckpt", ckpt, "--device", "cpu", "--decode", value)
    assert res.code == 2
    assert res.err.strip().splitlines() == [f"error: {message}"]
    assert res.out == ""
