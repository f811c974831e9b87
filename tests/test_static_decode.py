"""The static-shape decode step (static_decode.py) against the plain one.

- same tokens (and log-probabilities to float rounding) as the plain path for
  greedy, seeded top-k, top-p with a repetition penalty, batch 1 and 3, prompts
  of different lengths, and past the window slide, for every attention kind;
- the shapes attention sees: the static step passes one key length (the whole
  context) every token, where the plain step's key length grows by one, which
  is what made cuDNN re-plan every token on a GPU;
- the graph mode on the CPU, with a stand-in that replays the captured aten ops
  on the captured tensors (ReplayedGraph), so a step must keep to its static
  buffers as a CUDA graph needs;
- the mode choice, and on a CUDA machine the captured graph (skipped elsewhere).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

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


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


class _Recorder(TorchDispatchMode):
    """The aten ops a step runs, each with the very tensors it read and wrote."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default):
            raise AssertionError(f"{func}: waits for the device, which CUDA graph capture does not allow")
        out = func(*args, **kwargs)
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        # A result in new memory is recomputed into that same memory on replay (the
        # graph's private pool); in-place, out= and view results alias an input already.
        fresh = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)
                 and not any(_shares_memory(t, i) for i in inputs)]
        self.ops.append((func, args, kwargs, out, fresh))
        return out


class ReplayedGraph:
    """Stands in for GraphedStep on the CPU with a CUDA graph's semantics, not just its calls.

    Warm-up runs fn eagerly, as the real one does. The capture runs fn once
    more, recording every aten op with the tensors it touched; a replay reruns
    exactly those ops on exactly those tensors, writing each result into the
    memory it got at capture. So, as on a GPU, a replay reads only the buffers
    the capture saw: a step that rebinds an attribute to a new tensor, or
    reads a Python number, replays what it saw at capture; a caller that
    swaps a buffer instead of copying into it is not seen; the returned
    tensor is the same one every call. What the capture computed is then
    overwritten with NaN (a real capture computes nothing), so nothing may
    read it before the first replay.
    """

    def __init__(self, fn, warmup: int = 2):
        for _ in range(warmup):
            fn()
        recorder = _Recorder()
        with recorder:
            self.out = fn()
        self.ops = recorder.ops
        self.replays = 0
        for *_, fresh in self.ops:
            for t in fresh:
                if t.is_floating_point():
                    t.fill_(float("nan"))

    def __call__(self):
        self.replays += 1
        for func, args, kwargs, out, fresh in self.ops:
            if not fresh:
                func(*args, **kwargs)  # in place or out=: writes where it wrote at capture
                continue
            again = [t for t in tree_leaves(func(*args, **kwargs)) if isinstance(t, torch.Tensor)]
            kept = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            for k, a in zip(kept, again, strict=True):
                if any(k is f for f in fresh):
                    k.copy_(a)
        return self.out


@pytest.mark.parametrize("kind", ATTENTION_KINDS)
def test_graph_mode_gives_the_plain_tokens_replaying_its_capture(kind, monkeypatch):
    """The capture runs the step on the live buffers (KV at position 0, linear attention's
    sums, the repetition-penalty mask), which the prefill and `arm` must undo; each replay
    must then find this token, position and uniforms in the buffers the capture read."""
    import gpt2cli.static_decode as sd

    graphs: list[ReplayedGraph] = []
    m = model(kind)

    def graphed(fn, device):
        assert device == m.transformer.wte.weight.device  # captured on the model's GPU, not the current one
        graphs.append(ReplayedGraph(fn))
        return graphs[-1]

    monkeypatch.setattr(sd, "GraphedStep", graphed)
    monkeypatch.setattr(sd, "check_graph_device", lambda mode, device: None)
    cfg = SamplingConfig(max_new_tokens=20, top_k=30, repetition_penalty=1.5, seed=4)
    prompts = [[5, 7, 11]] * 2 + [[9]]
    same(complete(m, prompts, cfg, decode="plain"), complete(m, prompts, cfg, decode="graph"))
    # One graph per prompt length; replayed for positions 3..15 and 1..15 (BLOCK 16), then plain.
    assert [g.replays for g in graphs] == [13, 15]


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
