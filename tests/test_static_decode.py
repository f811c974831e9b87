"""The static-shape decode step (static_decode.py) against the plain one.

- same tokens (and log-probabilities to float rounding) as the plain path for
  greedy, seeded top-k, top-p with a repetition penalty, batch 1 and 3, prompts
  of different lengths, and past the window slide, for every attention kind;
- the shapes attention sees: the static step passes one key length (the whole
  context) every token, where the plain step's key length grows by one, which
  is what made cuDNN re-plan every token on a GPU;
- the mode choice, and on a CUDA machine the captured graph (skipped elsewhere).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt2cli.config import ATTENTION_KINDS
from gpt2cli.errors import UserError
from gpt2cli.generation import SamplingConfig, complete
from gpt2cli.static_decode import resolve_decode, supports_static
from tests.conftest import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

BLOCK = 16
# A small vocabulary keeps the sampled distributions far from uniform over 50k
# tokens, where a 1e-7 rounding difference can move an inverse-CDF draw.
SETTINGS = {
    "greedy": dict(temperature=0.0),
    "top-k": dict(top_k=20, seed=3),
    "top-p+penalty": dict(top_p=0.9, repetition_penalty=1.3, temperature=0.8, seed=5),
}
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CUDA graphs)")


def model(kind: str):
    return tiny_model(seed=1, attention=kind, block_size=BLOCK, vocab_size=96)


def same(plain, other):
    for a, b in zip(plain, other, strict=True):
        assert a.tokens == b.tokens
        assert a.stop_reason == b.stop_reason
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("batch", [1, 3])
def test_static_gives_the_plain_tokens(kind, setting, batch):
    m = model(kind)
    # 30 new tokens after 3: the window (16) fills and slides half-way through.
    cfg = SamplingConfig(max_new_tokens=30, **SETTINGS[setting])
    prompts = [[5, 7, 11]] * batch
    same(complete(m, prompts, cfg, decode="plain"), complete(m, prompts, cfg, decode="static"))


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_static_with_prompts_of_different_lengths_and_edge_lengths(kind):
    m = model(kind)
    cfg = SamplingConfig(max_new_tokens=12, top_k=10, seed=2)
    # Lengths 1, 4 and 15 form three groups; 20 is past the context (plain re-prefills only).
    prompts = [[3], [1, 2, 3, 4], list(range(15)), list(range(20))]
    same(complete(m, prompts, cfg, decode="plain"), complete(m, prompts, cfg, decode="static"))
    one = SamplingConfig(max_new_tokens=1, temperature=0.0)
    same(complete(m, prompts, one, decode="plain"), complete(m, prompts, one, decode="static"))


def record_key_lengths(monkeypatch) -> list[int]:
    """Key lengths of every attention call with one query (a decode step), in order."""
    seen: list[int] = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        if q.shape[-2] == 1:
            seen.append(k.shape[-2])
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return seen


@pytest.mark.parametrize("kind", ["standard", "gated"])
def test_static_step_attends_with_one_key_length(kind, monkeypatch):
    m = model(kind)
    n_layer = m.config.n_layer
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.0)
    seen = record_key_lengths(monkeypatch)
    complete(m, [[5, 7, 11]], cfg, decode="plain")
    # Prompt of 3 -> decode steps feed positions 3..11: keys 4..12, one call per layer each.
    assert seen == [n for n in range(4, 13) for _ in range(n_layer)]
    seen.clear()
    complete(m, [[5, 7, 11]], cfg, decode="static")
    assert len(seen) == 9 * n_layer
    assert set(seen) == {BLOCK}, "the static step must attend over the whole preallocated cache every token"


def test_linear_attention_calls_no_softmax_attention(monkeypatch):
    seen = record_key_lengths(monkeypatch)
    complete(model("linear"), [[5, 7, 11]], SamplingConfig(max_new_tokens=6, temperature=0.0), decode="static")
    assert seen == []  # its recurrent state is what stays fixed-size


class EagerGraph:
    """Stands in for GraphedStep on the CPU: runs the step at capture time as often as the
    real one does (warm-up + capture), then once per call, with the same side effects."""

    def __init__(self, fn, warmup: int = 2):
        for _ in range(warmup + 1):
            self.out = fn()
        self.fn = fn

    def __call__(self):
        self.out = self.fn()
        return self.out


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_graph_mode_undoes_what_its_capture_ran(kind, monkeypatch):
    """The capture runs the step on the live buffers (KV at position 0, linear attention's
    sums, the repetition-penalty mask); the prefill and `arm` must undo all of it."""
    import gpt2cli.static_decode as sd

    monkeypatch.setattr(sd, "GraphedStep", EagerGraph)
    monkeypatch.setattr(sd, "check_graph_device", lambda mode, device: None)
    m = model(kind)
    cfg = SamplingConfig(max_new_tokens=20, top_k=30, repetition_penalty=1.5, seed=4)
    prompts = [[5, 7, 11]] * 2 + [[9]]
    same(complete(m, prompts, cfg, decode="plain"), complete(m, prompts, cfg, decode="graph"))


def test_mode_choice():
    m = model("standard")
    assert all(supports_static(model(k)) for k in ATTENTION_KINDS)
    assert resolve_decode("auto", m) == "plain"  # CPU
    assert resolve_decode("static", m) == "static"
    with pytest.raises(UserError, match="--decode graph: needs a CUDA device"):
        resolve_decode("graph", m)
    with pytest.raises(UserError, match="--decode fast: expected auto, plain, static, graph"):
        resolve_decode("fast", m)


@cuda
@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_cuda_graph_gives_the_plain_tokens(kind):
    m = model(kind).cuda()
    assert resolve_decode("auto", m) == "graph"
    for setting in SETTINGS.values():
        cfg = SamplingConfig(max_new_tokens=30, **setting)
        prompts = [[5, 7, 11]] * 3 + [[1]]
        same(complete(m, prompts, cfg, decode="plain"), complete(m, prompts, cfg, decode="graph"))


@cuda
def test_cuda_graph_in_bf16_matches_static():
    m = model("standard").cuda().to(torch.bfloat16)
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.0)
    same(complete(m, [[5, 7, 11]] * 2, cfg, decode="static"), complete(m, [[5, 7, 11]] * 2, cfg, decode="graph"))
