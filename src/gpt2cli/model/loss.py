"""Cross-entropy through the tied LM head, in chunks of rows.

The (B*T, vocab) logits of a training batch are the largest tensor in a small
GPT-2 (2048 x 50304 floats = 400 MB). This computes the loss and its gradients
chunk by chunk in the forward pass, so only one chunk of logits exists at a
time and nothing of them is kept for backward. The maths is that of
`F.cross_entropy(h @ weight.T, targets)`; tests check it against that.
"""

from __future__ import annotations

import torch


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, vocab_size: int, chunk_rows: int, compute_dtype):
        w = weight[:vocab_size]
        valid = targets >= 0
        n_valid = valid.sum().clamp(min=1).to(torch.float32)
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if needs_grad else None
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if needs_grad else None
        w_c = w.to(compute_dtype)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for start in range(0, h.shape[0], chunk_rows):
            end = min(start + chunk_rows, h.shape[0])
            h_c = h[start:end].to(compute_dtype)
            logits = (h_c @ w_c.t()).float()
            tgt = targets[start:end]
            ok = valid[start:end]
            safe_tgt = tgt.clamp(min=0)
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, safe_tgt.unsqueeze(1)).squeeze(1)
            total += ((lse - picked) * ok).sum()
            if needs_grad:
                # d loss / d logits = (softmax - onehot) / n_valid, zero on ignored rows.
                probs = torch.exp(logits - lse.unsqueeze(1))
                probs[torch.arange(end - start, device=h.device), safe_tgt] -= 1.0
                probs *= (ok.to(probs.dtype) / n_valid).unsqueeze(1)
                g = probs.to(compute_dtype)
                grad_h[start:end] = (g @ w_c).to(h.dtype)
                grad_w += (g.t() @ h_c).float()
        if needs_grad:
            full_grad_w = torch.zeros_like(weight)
            full_grad_w[:vocab_size] = grad_w.to(weight.dtype)
            ctx.save_for_backward(grad_h, full_grad_w)
        return total / n_valid

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None, None, None


def chunked_cross_entropy(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    chunk_rows: int = 1024,
) -> torch.Tensor:
    """Mean cross-entropy of `h @ weight[:vocab_size].T` against `targets` (-1 = ignore).

    h: (N, C) final hidden states; weight: (V_padded, C) the tied embedding.
    Under autocast the matmuls run in the autocast dtype, the softmax in fp32.
    """
    dtype = h.dtype
    if torch.is_autocast_enabled(h.device.type):
        dtype = torch.get_autocast_dtype(h.device.type)
    with torch.autocast(device_type=h.device.type, enabled=False):
        return _ChunkedLinearCrossEntropy.apply(h, weight, targets, vocab_size, chunk_rows, dtype)
