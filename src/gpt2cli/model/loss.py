"""Cross-entropy through the tied LM head, in chunks of rows.

The (B*T, vocab) logits of a training batch are the largest tensor in a small
GPT-2 (2048 x 50304 floats = 400 MB). This computes the loss and its gradients
chunk by chunk in the forward pass, so only one chunk of logits exists at a
time and nothing of them is kept for backward. The maths is that of
`F.cross_entropy(h @ weight[:vocab].T, targets)`; tests check it against that.

Per chunk, in the compute dtype (bf16 or fp16 under autocast, else fp32),
everything over the (rows, vocab) block happens in one reused buffer, in as
few passes over memory as the eager kernels allow (on a CPU these passes, not
the matmuls, are what made a naive chunked loss slow):

1. logits = h @ W.T (the padded vocabulary rows get -inf, so they take no
   probability and receive exactly zero gradient);
2. softmax in place: the kernel accumulates in fp32 and rounds once on output;
3. the row's loss, lse - logit[target] = -log p[target]. In fp32 this agrees
   with logsumexp to ~1e-7; in bf16 the rounded probability adds at most
   2^-9 relative error (fp16: 2^-11), <= 0.002 nats per row, below the
   rounding of the low-precision logits that any autocast loss starts from.
   Where p[target] is below the compute dtype's smallest normal number it
   has lost its precision or underflowed to 0, and that row is computed
   exactly instead. In fp32 and bf16 (one exponent range) that is a row loss
   over 87 nats, a diverging model; in fp16 p < 6.1e-5, a row loss over 9.7
   nats, which an untrained model over 50k tokens (10.8) exceeds, so there
   most early rows take this path. The exact loss is recomputed with
   logsumexp on the CPU, where checking costs nothing; on accelerators, to
   keep the step free of host syncs, from the row maximum (lse = max_j
   logit_j - log max_j p_j) for every row;
4. gradient: d loss_row / d logits = softmax - onehot(target), formed in
   place, then grad_h = G @ W and grad_W += G.T @ h (fp32 accumulator).

The 1/n_valid of the mean and the incoming gradient are applied in
backward, to the small results rather than to the big blocks.

On the CPU the work buffers (the logits block, the low-precision copy of the
weight, the per-chunk weight gradient) are kept between calls, one set per
weight tensor: a fresh tensor of tens of MB comes from mmap and pays a page
fault per 4 KiB on first touch, every step (~25 ms per 50 MB here). Nothing
returned or kept for backward points into them. (CUDA's caching allocator
already reuses memory.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

# Scratch budget for one chunk of logits. 128 MiB keeps the block a fraction of
# the full logits (2048 x 50304 x 4 B = 400 MB) while the matmuls stay large
# and the fp32 weight gradient is accumulated over few chunks.
CHUNK_BYTES = 128 * 2**20
# Rows of the fp32 weight-gradient accumulator converted per add (a few MB: stays in cache).
_ADD_BLOCK = 4096


class _Scratch:
    """Named work buffers, grown on demand and reused between calls."""

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        n = math.prod(shape)
        buf = self.buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.device != device or buf.numel() < n:
            buf = torch.empty(n, dtype=dtype, device=device)
            self.buffers[name] = buf
        return buf[:n].view(shape)


class _NoScratch:
    @staticmethod
    def get(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=device)


# One scratch per weight tensor, dropped with it (keyed by identity, held weakly).
_SCRATCH: WeakIdKeyDictionary = WeakIdKeyDictionary()


def _scratch_for(weight: torch.Tensor) -> _Scratch | _NoScratch:
    if weight.device.type != "cpu":
        return _NoScratch()
    scratch = _SCRATCH.get(weight)
    if scratch is None:
        scratch = _SCRATCH[weight] = _Scratch()
    return scratch


def _host_checks_are_free(device: torch.device) -> bool:
    """On the CPU, looking at a tensor's values from Python waits for nothing."""
    return device.type == "cpu"


def _exact_row_loss(h: torch.Tensor, w: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """logsumexp(logits) - logits[target] for a few rows, the logits rounded as in the chunk."""
    logits = (h @ w.t()).float()
    return torch.logsumexp(logits, dim=1) - logits.gather(1, tgt.unsqueeze(1)).squeeze(1)


def full_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of whole (..., vocab) logits against `targets` (-1 = ignore), in fp32.

    The plain loss (`GPT.forward(idx, targets)`, `GPT.full_loss`): every logit
    exists at once. Under torch.compile inductor fuses the upcast, log-softmax
    and NLL with the LM head's output; eagerly it is the reference the chunked
    loss is held to.
    """
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)


def chunk_rows_for(n_rows: int, padded_vocab: int, dtype: torch.dtype) -> int:
    """Equal-sized chunks, as few as fit in CHUNK_BYTES each."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    most = max(1, CHUNK_BYTES // (padded_vocab * itemsize))
    n_chunks = -(-n_rows // most)
    return -(-n_rows // n_chunks)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, vocab_size: int, chunk_rows: int, compute_dtype, needs_grad: bool):
        n_rows, width = h.shape
        padded = weight.shape[0]
        device = h.device
        host_checks = _host_checks_are_free(device)
        scratch = _scratch_for(weight)
        smallest_normal = torch.finfo(compute_dtype).tiny  # below it p[target] is subnormal, or 0
        if compute_dtype == weight.dtype:
            w_c = weight
        else:
            w_c = scratch.get("weight", weight.shape, compute_dtype, device).copy_(weight)
        valid = targets >= 0
        n_valid = valid.sum().clamp(min=1).to(torch.float32)
        safe_tgt = targets.clamp(min=0)
        rows = max(1, min(chunk_rows, n_rows))
        block = scratch.get("logits", (rows, padded), compute_dtype, device)
        arange = torch.arange(rows, device=device)
        total = torch.zeros((), dtype=torch.float32, device=device)
        grad_h = grad_w = part_w = part_f = None
        if needs_grad:
            grad_h = torch.empty(n_rows, width, dtype=h.dtype, device=device)
            grad_w = torch.empty(padded, width, dtype=torch.float32, device=device)
            if compute_dtype != torch.float32:
                part_w = scratch.get("grad_weight", (padded, width), compute_dtype, device)
                part_f = scratch.get("grad_block", (min(_ADD_BLOCK, padded), width), torch.float32, device)
        for i, start in enumerate(range(0, n_rows, rows)):
            end = min(start + rows, n_rows)
            n = end - start
            h_c = h[start:end].to(compute_dtype)
            tgt = safe_tgt[start:end]
            ok = valid[start:end]
            logits = block[:n]
            torch.mm(h_c, w_c.t(), out=logits)
            if padded > vocab_size:
                logits[:, vocab_size:] = float("-inf")
            if not host_checks:
                top = logits.amax(dim=1).float()
                picked = logits.gather(1, tgt.unsqueeze(1)).squeeze(1).float()
            probs = torch.softmax(logits, dim=1, out=logits)  # in place: row by row
            p_tgt = probs.gather(1, tgt.unsqueeze(1)).squeeze(1).float()
            row_loss = -torch.log(p_tgt)
            imprecise = (p_tgt < smallest_normal) & ok
            if not host_checks:
                by_max = top - torch.log(probs.amax(dim=1).float()) - picked
                row_loss = torch.where(imprecise, by_max, row_loss)
            elif imprecise.any():
                rows_out = imprecise.nonzero().squeeze(1)
                row_loss[rows_out] = _exact_row_loss(h_c[rows_out], w_c[:vocab_size], tgt[rows_out])
            total += torch.where(ok, row_loss, 0.0).sum()  # ignored rows may hold inf: not 0 * inf
            if not needs_grad:
                continue
            probs[arange[:n], tgt] -= 1.0  # softmax - onehot
            # Ignored rows get no gradient: zero their h for grad_W, their rows of grad_h below.
            h_ok = h_c * ok.unsqueeze(1).to(compute_dtype)
            grad_h[start:end] = (probs @ w_c).float() * ok.unsqueeze(1)
            if part_w is None:  # fp32: the matmul accumulates in place
                if i == 0:
                    torch.mm(probs.t(), h_ok, out=grad_w)
                else:
                    grad_w.addmm_(probs.t(), h_ok)
            else:  # bf16 matmul, fp32 accumulator
                torch.mm(probs.t(), h_ok, out=part_w)
                if i == 0:
                    grad_w.copy_(part_w)
                else:
                    # A mixed-dtype add_ takes a slow scalar path: convert a block, then add.
                    for b in range(0, padded, _ADD_BLOCK):
                        e = min(b + _ADD_BLOCK, padded)
                        part_f[: e - b].copy_(part_w[b:e])
                        grad_w[b:e] += part_f[: e - b]
        if needs_grad:
            # Held as attributes, not saved tensors: backward scales them in place
            # and hands them over, so autograd can adopt grad_W as the weight's
            # .grad without copying 50304 x C floats.
            ctx.grads = (grad_h, grad_w, n_valid, weight.dtype)
        return total / n_valid

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.grads is None:
            raise RuntimeError("chunked_cross_entropy: backward through the same loss twice is not supported")
        grad_h, grad_w, n_valid, weight_dtype = ctx.grads
        ctx.grads = None
        scale = grad_out / n_valid
        grad_h.mul_(scale)
        grad_w.mul_(scale)
        return grad_h, grad_w.to(weight_dtype), None, None, None, None, None


def chunked_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of `h @ weight[:vocab_size].T` against `targets` (-1 = ignore).

    h: (N, C) final hidden states; weight: (V_padded, C) the tied embedding,
    rows past vocab_size unused. chunk_rows: rows per chunk (default: as many
    as fit in CHUNK_BYTES). Under autocast the matmuls run in the autocast
    dtype, the softmax accumulates in fp32, the weight gradient in fp32.
    """
    dtype = h.dtype
    if torch.is_autocast_enabled(h.device.type):
        dtype = torch.get_autocast_dtype(h.device.type)
    if chunk_rows is None:
        chunk_rows = chunk_rows_for(h.shape[0], weight.shape[0], dtype)
    needs_grad = torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
    apply = _opaque_to_compiler if torch.compiler.is_compiling() else _apply
    return apply(h, weight, targets, vocab_size, chunk_rows, dtype, needs_grad)


def _apply(h, weight, targets, vocab_size, chunk_rows, dtype, needs_grad):
    with torch.autocast(device_type=h.device.type, enabled=False):
        return _ChunkedLinearCrossEntropy.apply(h, weight, targets, vocab_size, chunk_rows, dtype, needs_grad)


# torch.compile (`gpt2 train --compile`) compiles around this, not through it:
# the buffers, in-place softmax and Python loop are already what a compiler
# would aim for, and inductor's rewrite of them measured slower on the CPU.
# (torch._disable_dynamo imports the compiler only when it is first called,
# so eager use never pays for importing torch._dynamo.)
_opaque_to_compiler = torch._disable_dynamo(_apply)
