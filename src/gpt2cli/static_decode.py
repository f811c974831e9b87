"""Decoding with static shapes, and that step captured in a CUDA graph.

Why: the plain decode step (generation.py) attends over a slice of the KV
cache that grows by one position per token. On Hopper GPUs PyTorch picks
cuDNN's attention for that call, and cuDNN builds a new execution plan for
every new shape: `gpt2 generate` on an H200 spent 7.4 of 8.9 s there (18
tokens/s). Here every decode step has the same shapes and touches the same
memory, so nothing is planned per token, and the whole step (model, sampler,
bookkeeping) can be recorded once as a CUDA graph and replayed per token:

- the KV cache is preallocated to the whole context (block_size) and zeroed;
  the step writes its key and value at position `pos` (a tensor, not a
  Python int) and attends over the WHOLE cache with a mask `positions <=
  pos`, so attention always sees key length block_size. Masked keys get
  weight exactly 0; the zeroing keeps 0 x value finite.
- linear attention's recurrent state (S, z) already has a fixed size; it is
  updated in place.
- the step also draws the token (`Sampler`), marks it for the repetition
  penalty and writes it where the next step reads its input, so a replay
  needs only this step's uniforms copied in and one host read of the result.

Modes (`generate(..., decode=...)`, `gpt2 generate --decode`): "plain" is
generation.py's own step; "static" runs the step below eagerly (any device:
the CPU tests hold it to the plain path token for token); "graph" replays it
from a CUDA graph (CUDA only); "auto" is graph on CUDA and plain elsewhere
(on a CPU the static step is slower: attention reads the whole context every
token and there is no launch overhead to save).

The prompt itself is prefilled by the plain forward, into the same buffers;
once the text outgrows the context the plain path takes over (it re-prefills
the last window every token, see generation.py), so both give the same tokens.
On CUDA every decoding attention call is kept off cuDNN (`attention_backends`):
flash and memory-efficient attention need no per-shape plan.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gpt2cli.errors import UserError
from gpt2cli.model.attention.linear import LinearAttention, LinearState
from gpt2cli.model.attention.standard import KVCache, StandardAttention

DECODE_MODES = ("auto", "plain", "static", "graph")


def supports_static(model) -> bool:
    """Every layer's attention kind has a static step (softmax kinds and linear do)."""
    return all(isinstance(blk.attn, (StandardAttention, LinearAttention)) for blk in model.transformer.h)


def resolve_decode(mode: str, model) -> str:
    """The decode path to run: plain, static or graph (see the module doc for auto)."""
    if mode not in DECODE_MODES:
        raise UserError(f"--decode {mode}: expected {', '.join(DECODE_MODES)}")
    device = model.transformer.wte.weight.device
    if mode == "auto":
        return "graph" if device.type == "cuda" and supports_static(model) else "plain"
    if mode in ("static", "graph") and not supports_static(model):
        kinds = sorted({blk.attn.kind for blk in model.transformer.h})
        raise UserError(f"--decode {mode}: attention kind {', '.join(kinds)} has no static decode step")
    check_graph_device(mode, device)
    return mode


def check_graph_device(mode: str, device: torch.device) -> None:
    if mode == "graph" and device.type != "cuda":
        raise UserError(f"--decode graph: needs a CUDA device (the model is on {device.type}); use static or plain")


def attention_backends(device: torch.device):
    """On CUDA, scaled_dot_product_attention without cuDNN (it re-plans for every new shape)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


class StaticKV:
    """A softmax layer's keys and values for every position of the context: (B, H, block, D), zeroed."""

    def __init__(self, attn: StandardAttention, batch: int, block: int, device, dtype):
        self.cache: KVCache = attn.new_state(batch, block, device, dtype)
        self.k, self.v = self.cache.k.zero_(), self.cache.v.zero_()

    def prefill_state(self) -> KVCache:
        self.cache.length = 0  # the prefill appends from position 0, into these buffers
        return self.cache

    def take(self, state: KVCache) -> None:
        pass  # the prefill wrote into these buffers already

    def step(self, attn: StandardAttention, x: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        q, k, v = attn.heads(x)
        self.k.index_copy_(2, pos, k.to(self.k.dtype))
        self.v.index_copy_(2, pos, v.to(self.v.dtype))
        y = F.scaled_dot_product_attention(q, self.k, self.v, attn_mask=valid)
        return attn.merge(attn.gate(x, y))


class StaticRecurrent:
    """A linear-attention layer's sums S (B, H, D, D) and z (B, H, D), updated in place."""

    def __init__(self, attn: LinearAttention, batch: int, block: int, device, dtype):
        self.state: LinearState = attn.new_state(batch, block, device, dtype)
        self.S, self.z = self.state.S, self.state.z

    def prefill_state(self) -> LinearState:
        # The prompt's chunked form adds to the sums it is given: start them at zero
        # (a graph's capture ran the step on them).
        self.S.zero_()
        self.z.zero_()
        self.state.S, self.state.z, self.state.length = self.S, self.z, 0
        return self.state

    def take(self, state: LinearState) -> None:
        # The prefill's forward rebinds state.S / state.z to new tensors: copy them home.
        self.S.copy_(state.S)
        self.z.copy_(state.z)

    def step(self, attn: LinearAttention, x: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        q, k, v = attn.heads(x)
        self.state.S, self.state.z = self.S, self.z
        y, _ = attn.mix(q, k, v, self.state, need_weights=False)
        self.S.copy_(self.state.S)
        self.z.copy_(self.state.z)
        return attn.merge(attn.gate(x, y))


def static_layer(attn, batch: int, block: int, device, dtype):
    if isinstance(attn, StandardAttention):  # gated attention is one too
        return StaticKV(attn, batch, block, device, dtype)
    if isinstance(attn, LinearAttention):
        return StaticRecurrent(attn, batch, block, device, dtype)
    raise ValueError(f"attention kind {attn.kind!r} has no static decode step")


def static_hidden(model, layers: list, idx: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The final hidden state (B, C) of one new token per row at position `pos` (a (1,) tensor).

    GPT.hidden and Block.forward for T = 1, with the attention step of each layer's static buffers.
    """
    t = model.transformer
    x = t.drop(t.wte(idx) + t.wpe(pos))
    for block, layer in zip(t.h, layers, strict=True):
        x = x + layer.step(block.attn, block.ln_1(x), pos, valid)
        x = x + block.mlp(block.ln_2(x))
    return t.ln_f(x)[:, -1]


class GraphedStep:
    """A function of static buffers, recorded once as a CUDA graph and replayed per call.

    `fn()` must read its inputs from, and write its effects to, tensors that
    stay put; it returns one tensor, which each replay refills (read it
    before the next call). The warm-up runs and the capture execute fn too,
    so their effects on those buffers must be overwritten before they matter.
    """

    def __init__(self, fn: Callable[[], torch.Tensor], device: torch.device, warmup: int = 2):
        # Streams and the capture belong to the current GPU: make it the model's, which a
        # library caller's cuda:1 model need not be.
        self.device = device
        with torch.cuda.device(device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # lazy init and workspace allocation happen outside the capture
                for _ in range(warmup):
                    fn()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = fn()

    def __call__(self) -> torch.Tensor:
        with torch.cuda.device(self.device):
            self.graph.replay()
        return self.out


class StaticDecoder:
    """One batch's decode step with fixed shapes and buffers (see the module doc).

    Use: `prefill_state()` for the plain forward of the prompt, `arm(state,
    tokens)` with the prompt's state and the first drawn tokens, then
    `step(u)` per further token while `length < block_size`. Returns the
    (3, B) tensor [token, logprob, entropy] that generation.py reads.
    """

    def __init__(self, model, forward, sampler, batch: int, present: torch.Tensor | None, graph: bool):
        w = model.transformer.wte.weight
        device, dtype = w.device, w.dtype
        block = model.config.block_size
        self.model, self.forward, self.sampler, self.present = model, forward, sampler, present
        self.layers = [static_layer(blk.attn, batch, block, device, dtype) for blk in model.transformer.h]
        self.idx = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.positions = torch.arange(block, device=device)
        self.u = torch.zeros(batch, dtype=torch.float64, device=device) if sampler.needs_uniforms else None
        self.length = 0  # the host's copy of pos
        self.run: Callable[[], torch.Tensor] = self._step
        if graph:
            # Warm-up and capture run the step three times, from position 0: they write keys at
            # positions 0-2 (the prefill or a later step overwrites each before it is unmasked),
            # add to linear attention's sums (zeroed by prefill_state) and mark tokens in the
            # penalty mask (restored here). tests/test_static_decode.py replays this on the CPU.
            saved = present.clone() if present is not None else None
            self.run = GraphedStep(self._step, device)
            if saved is not None:
                present.copy_(saved)
        self.armed = False

    def prefill_state(self):
        from gpt2cli.model.gpt import DecodeState

        return DecodeState(layers=[layer.prefill_state() for layer in self.layers], pos=0)

    def arm(self, state, tokens: torch.Tensor) -> None:
        """After the prompt's forward: take its state, and the tokens drawn from it as the next input."""
        for layer, s in zip(self.layers, state.layers, strict=True):
            layer.take(s)
        self.idx.copy_(tokens)
        self.pos.fill_(state.pos)
        self.length = state.pos
        self.armed = True

    def _step(self) -> torch.Tensor:
        valid = (self.positions <= self.pos).view(1, 1, 1, -1)
        with self.forward.kernels(self.idx.numel()):
            logits = self.forward.head(static_hidden(self.model, self.layers, self.idx, self.pos, valid))
        token, logprob, entropy = self.sampler(logits, self.present, self.u)
        if self.present is not None:
            self.present.scatter_(1, token.unsqueeze(1), True)
        self.idx.copy_(token.unsqueeze(1))
        self.pos.add_(1)
        return torch.stack((token.float(), logprob, entropy))

    def step(self, u: torch.Tensor | None) -> torch.Tensor:
        if u is not None:
            self.u.copy_(u)
        out = self.run()
        self.length += 1
        return out
