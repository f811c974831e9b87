"""Causal linear attention (Katharopoulos et al. 2020, "Transformers are RNNs").

With the positive feature map phi(x) = elu(x) + 1 (their eq. 7) applied to
each head's queries and keys, position i's output is (their eq. 9):

    y_i = phi(q_i)^T S_i / (phi(q_i)^T z_i),
    S_i = sum_{j<=i} phi(k_j) v_j^T   (D x D),   z_i = sum_{j<=i} phi(k_j)   (D).

Training uses a chunked parallel form: inside a chunk of C positions the
masked (C x C) products phi(q) phi(k)^T are formed directly; across chunks
only the running S and z are carried. Memory is O(T*C + (T/C)*D^2), linear
in T, with no (T x T) matrix anywhere (softmax attention avoids one only
inside a fused kernel such as SDPA's). Decoding uses the recurrent
form (their §3.4): a state of S and z per layer whose size never changes;
a prompt (T > 1) goes through the chunked form starting from that state.

Choices the paper leaves open, fixed here:
- No 1/sqrt(D) scaling. Any scale applied after phi cancels in the ratio;
  one applied before phi would change the feature map itself, which the paper
  does not do.
- No attention dropout: there is no weight matrix to drop from in the
  chunked or recurrent forms. `cfg.dropout` still applies to the residual.
- Everything runs in fp32 with autocast off (S, z and the normaliser are long
  sums that bf16's 8-bit mantissa cannot hold), and the denominator is
  clamped to at least EPS (phi > 0 keeps it positive in exact arithmetic,
  but exp can underflow). The output is cast back to the input's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt2cli.model.attention.base import CausalSelfAttention

EPS = 1e-6


def feature_map(x: torch.Tensor) -> torch.Tensor:
    """phi(x) = elu(x) + 1 > 0, Katharopoulos et al. 2020 eq. 7."""
    return F.elu(x) + 1.0


class LinearState:
    """Recurrent decoding state: S (B, H, D, D), z (B, H, D) in fp32, and the positions seen.

    Its size is fixed at creation; `length` is the only thing that grows.
    """

    def __init__(self, batch: int, n_head: int, head_dim: int, device):
        self.S = torch.zeros(batch, n_head, head_dim, head_dim, device=device, dtype=torch.float32)
        self.z = torch.zeros(batch, n_head, head_dim, device=device, dtype=torch.float32)
        self.length = 0

    def nbytes(self) -> int:
        return self.S.numel() * self.S.element_size() + self.z.numel() * self.z.element_size()


def chunked_linear_attention(
    fq: torch.Tensor,
    fk: torch.Tensor,
    v: torch.Tensor,
    S0: torch.Tensor | None,
    z0: torch.Tensor | None,
    chunk: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Causal linear attention over fp32 features fq, fk (B, H, T, D) and values v (B, H, T, Dv).

    S0 (B, H, D, Dv) and z0 (B, H, D) are the sums over earlier positions (None
    for none). Returns y (B, H, T, Dv) and the sums S, z after the last position.
    """
    B, H, T, D = fq.shape
    Dv = v.shape[-1]
    C = min(chunk, T)
    N = -(-T // C)
    pad = N * C - T
    if pad:
        # Padded keys and values are zero, so they add nothing to any sum.
        fq, fk, v = (F.pad(t, (0, 0, 0, pad)) for t in (fq, fk, v))
    fq, fk, v = (t.view(B, H, N, C, t.shape[-1]) for t in (fq, fk, v))

    # Inside each chunk: the masked (C x C) quadratic form.
    tri = torch.ones(C, C, dtype=torch.bool, device=fq.device).tril()
    A = (fq @ fk.transpose(-2, -1)).masked_fill(~tri, 0.0)  # (B, H, N, C, C)
    num = A @ v
    den = A.sum(-1)

    # Across chunks: each chunk sees the sums over all earlier chunks (an exclusive prefix sum).
    kv = fk.transpose(-2, -1) @ v  # (B, H, N, D, Dv)
    ks = fk.sum(-2)  # (B, H, N, D)
    S_incl = kv.cumsum(2)
    z_incl = ks.cumsum(2)
    S_prev = torch.cat([torch.zeros_like(kv[:, :, :1]), S_incl[:, :, :-1]], dim=2)
    z_prev = torch.cat([torch.zeros_like(ks[:, :, :1]), z_incl[:, :, :-1]], dim=2)
    S_last, z_last = S_incl[:, :, -1], z_incl[:, :, -1]
    if S0 is not None:
        S_prev = S_prev + S0.unsqueeze(2)
        z_prev = z_prev + z0.unsqueeze(2)
        S_last = S_last + S0
        z_last = z_last + z0
    num = num + fq @ S_prev
    den = den + (fq @ z_prev.unsqueeze(-1)).squeeze(-1)

    y = num / den.clamp(min=EPS).unsqueeze(-1)
    y = y.reshape(B, H, N * C, Dv)[:, :, :T]
    return y, S_last, z_last


def recurrent_step(
    fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, S: torch.Tensor, z: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decoding step of the RNN form (Katharopoulos et al. §3.4): fq, fk (B, H, 1, D), v (B, H, 1, Dv)."""
    S = S + fk.transpose(-2, -1) @ v
    z = z + fk.squeeze(2)
    den = fq @ z.unsqueeze(-1)  # (B, H, 1, 1)
    return (fq @ S) / den.clamp(min=EPS), S, z


def linear_attention_weights(fq: torch.Tensor, fk: torch.Tensor) -> torch.Tensor:
    """The implicit weights A_ij = phi(q_i).phi(k_j) / sum_{j'<=i} phi(q_i).phi(k_j'), (B, H, T, T)."""
    T = fq.shape[2]
    scores = fq @ fk.transpose(-2, -1)
    scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=fq.device).tril(), 0.0)
    return scores / scores.sum(-1, keepdim=True).clamp(min=EPS)


class LinearAttention(CausalSelfAttention):
    kind = "linear"
    chunk_size = 64  # C: the quadratic work per chunk is C^2*D, the carried state D^2

    def new_state(self, batch, max_len, device, dtype):
        # Constant size whatever max_len is; fp32 whatever the model's dtype (see module doc).
        return LinearState(batch, self.n_head, self.head_dim, device)

    def mix(self, q, k, v, state, need_weights):
        if need_weights and state is not None and state.length > 0:
            raise ValueError(
                "linear attention keeps no past keys: attention weights need a fresh state"
            )
        with torch.autocast(q.device.type, enabled=False):
            fq, fk = feature_map(q.float()), feature_map(k.float())
            if state is not None and q.shape[2] == 1:
                y, S, z = recurrent_step(fq, fk, v.float(), state.S, state.z)
            else:
                S0 = state.S if state is not None else None
                z0 = state.z if state is not None else None
                y, S, z = chunked_linear_attention(fq, fk, v.float(), S0, z0, self.chunk_size)
            w = linear_attention_weights(fq, fk).to(q.dtype) if need_weights else None
        if state is not None:
            state.S, state.z = S.detach(), z.detach()
            state.length += q.shape[2]
        return y.to(q.dtype), w
