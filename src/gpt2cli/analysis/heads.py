"""Per-head statistics: what each attention head looks at, and what removing it costs.

For every layer x head, on real text:
- entropy: of each query's attention row, divided by log(number of visible
  positions) so 1 means uniform and 0 means one key;
- distance: mean of (query - key) positions under the attention weights;
- sink: mean attention mass on position 0 (Xiao et al. 2023, "attention sinks");
- previous_token: mean mass on position i-1;
- induction: on random tokens repeated twice, mean mass from each token of the
  second copy to the token right after its earlier occurrence (Olsson et al.
  2022, "In-context learning and induction heads", §2);
- output_norm: mean L2 norm of what the head writes into the residual stream,
  i.e. its output through its own slice of c_proj (bias excluded; it belongs
  to no head). Unlike the raw (B, H, T, D) output this is comparable across
  heads whose c_proj slices have different scales;
- importance: loss increase when the head's output is zeroed (zero-ablation),
  or replaced by its mean over the data (mean-ablation, Wang et al. 2022 IOI §3).

Query-position averages skip position 0, which can only attend to itself
(its entropy is undefined and its sink/previous-token scores trivial). All of
it goes through `Probe` (attention weights, head outputs, head masks), so any
attention kind that honours the probe can be inspected.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gpt2cli.errors import UserError
from gpt2cli.model import GPT, Probe
from gpt2cli.tokenizer import EOT_ID

# (key, title, short column name, number format) of the per-head figures, in table/plot order.
STATISTICS: tuple[tuple[str, str, str, str], ...] = (
    ("entropy", "entropy (normalised)", "entropy", ".2f"),
    ("distance", "distance (positions)", "dist", ".1f"),
    ("sink", "sink (mass on position 0)", "sink", ".2f"),
    ("previous_token", "previous-token mass", "prev", ".2f"),
    ("induction", "induction score", "induct", ".2f"),
    ("output_norm", "output norm (through c_proj)", "norm", ".3g"),
    ("zero_importance", "Δloss, zero-ablation", "Δzero", "+.4f"),
    ("mean_importance", "Δloss, mean-ablation", "Δmean", "+.4f"),
)

# Attention weights of a whole forward pass are held at once (L x B x H x T x T);
# batches are sized so that, with temporaries, they stay around this many bytes.
WEIGHTS_BUDGET_BYTES = 256 * 1024 * 1024
# Rows of logits computed at once for the loss: 512 x 50k floats is 100 MB for GPT-2's vocabulary.
LOSS_CHUNK_ROWS = 512
# Sequences per ablation forward pass (no attention weights are kept there).
ABLATION_BATCH = 8


@dataclass
class Progress:
    """A progress event: `done` of `total` units of `stage`."""

    stage: str
    done: int
    total: int


@dataclass
class HeadReport:
    """Everything `inspect heads` measured; arrays are (n_layer, n_head)."""

    n_layer: int
    n_head: int
    attention: str
    tokens: int
    sequences: int
    seq_len: int
    ablation_sequences: int
    induction_sequences: int
    induction_half: int
    seed: int
    baseline_loss: float
    entropy: np.ndarray
    distance: np.ndarray
    sink: np.ndarray
    previous_token: np.ndarray
    induction: np.ndarray
    output_norm: np.ndarray
    zero_ablation_loss: np.ndarray
    mean_ablation_loss: np.ndarray
    zero_ablation_se: np.ndarray
    mean_ablation_se: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def zero_importance(self) -> np.ndarray:
        return self.zero_ablation_loss - self.baseline_loss

    @property
    def mean_importance(self) -> np.ndarray:
        return self.mean_ablation_loss - self.baseline_loss

    @property
    def zero_relative(self) -> np.ndarray:
        return self.zero_importance / self.baseline_loss

    def grid(self, key: str) -> np.ndarray:
        return getattr(self, key)

    def labels(self) -> list[str]:
        return [head_label(i, j) for i in range(self.n_layer) for j in range(self.n_head)]

    def to_json(self) -> dict:
        heads = []
        for i in range(self.n_layer):
            for j in range(self.n_head):
                rec = {"layer": i, "head": j, "name": head_label(i, j)}
                for key in (
                    "entropy",
                    "distance",
                    "sink",
                    "previous_token",
                    "induction",
                    "output_norm",
                ):
                    rec[key] = _num(self.grid(key)[i, j])
                for mode in ("zero", "mean"):
                    loss = self.grid(f"{mode}_ablation_loss")[i, j]
                    rec[f"{mode}_ablation"] = {
                        "loss": _num(loss),
                        "delta": _num(loss - self.baseline_loss),
                        "relative": _num((loss - self.baseline_loss) / self.baseline_loss),
                        "delta_se": _num(self.grid(f"{mode}_ablation_se")[i, j]),
                    }
                heads.append(rec)
        return {
            "attention": self.attention,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "tokens": self.tokens,
            "sequences": self.sequences,
            "seq_len": self.seq_len,
            "ablation_sequences": self.ablation_sequences,
            "ablation_tokens": self.ablation_sequences * self.seq_len,
            "induction_sequences": self.induction_sequences,
            "induction_half": self.induction_half,
            "seed": self.seed,
            "baseline_loss": self.baseline_loss,
            "heads": heads,
            "grids": {
                key: [[_num(v) for v in row] for row in self.grid(key)] for key, *_ in STATISTICS
            },
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def _num(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


# -- input text ---------------------------------------------------------------
def load_tokens(
    data_dir: Path | None, text_file: Path | None, vocab_size: int, limit: int | None = None
) -> tuple[np.ndarray, str]:
    """The first `limit` token ids to inspect on: of the val split of DATA_DIR, or of FILE
    tokenized; and a description of the source."""
    if (data_dir is None) == (text_file is None):
        raise UserError("give exactly one of --data DATA_DIR or --text FILE")
    if data_dir is not None:
        from gpt2cli.data.reader import read_tokens

        tokens = read_tokens(data_dir, "val")[:limit]  # a memmap: only the slice is read
        flag, source = "--data", f"{data_dir} (val split)"
    else:
        if text_file.is_dir():
            raise UserError(f"--text {text_file}: is a directory, expected a text file")
        if not text_file.is_file():
            raise UserError(f"--text {text_file}: no such file")
        try:
            text = text_file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"--text {text_file}: not UTF-8 text") from None
        from gpt2cli.tokenizer import get_tokenizer

        tokens = get_tokenizer().encode_ordinary(text)[:limit]
        flag, source = "--text", str(text_file)
        if len(tokens) < 3:
            raise UserError(f"--text {text_file}: {len(tokens)} tokens of text; at least 3 are needed")
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.size and int(tokens.max()) >= vocab_size:
        raise UserError(
            f"{flag} {data_dir or text_file}: token id {int(tokens.max())} does not fit the model's "
            f"vocab_size {vocab_size} (the checkpoint was trained on a smaller vocabulary)"
        )
    return tokens, source


def token_windows(tokens: np.ndarray, seq_len: int, n_tokens: int) -> torch.Tensor:
    """Non-overlapping (seq_len + 1)-token windows covering up to `n_tokens` predicted tokens.

    Each window is one sequence of inputs plus its shifted targets. A text
    shorter than one window gives one shorter window.
    """
    if tokens.size < 3:
        raise UserError(f"the input text has {tokens.size} tokens; at least 3 are needed")
    seq_len = min(seq_len, tokens.size - 1)
    n_seq = min(max(n_tokens // seq_len, 1), (tokens.size - 1) // seq_len)
    starts = np.arange(n_seq) * seq_len
    rows = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    return torch.from_numpy(rows)


def repeated_random_tokens(n_seq: int, half: int, vocab_size: int, seed: int) -> torch.Tensor:
    """(n_seq, 2*half) sequences of `half` random tokens written twice (Olsson et al. 2022).

    Drawn below <|endoftext|> so the repeat is not read as a document boundary.
    """
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(0, min(vocab_size, EOT_ID), (n_seq, half), generator=gen)
    return torch.cat([first, first], dim=1)


# -- statistics of attention weights -------------------------------------------
def pattern_sums(w: torch.Tensor) -> tuple[dict[str, torch.Tensor], int]:
    """Per-head sums over batch and query positions 1..T-1 of one layer's weights (B, H, T, T).

    Returns ({statistic: (H,) sums}, number of query rows summed per head).
    """
    B, H, T, _ = w.shape
    w = w.float()
    rows = w[:, :, 1:, :]  # queries that see more than themselves
    q = torch.arange(1, T, device=w.device, dtype=torch.float32)
    k = torch.arange(T, device=w.device, dtype=torch.float32)
    plogp = rows * torch.log(rows.clamp_min(1e-30))
    entropy = -plogp.sum(-1) / torch.log(q + 1)  # query i sees i + 1 positions
    distance = (rows * (q[:, None] - k[None, :]).clamp_min(0)).sum(-1)
    sums = {
        "entropy": entropy.sum(dim=(0, 2)),
        "distance": distance.sum(dim=(0, 2)),
        "sink": rows[..., 0].sum(dim=(0, 2)),
        "previous_token": w.diagonal(offset=-1, dim1=-2, dim2=-1).sum(dim=(0, 2)),
    }
    return sums, B * (T - 1)


def induction_sums(w: torch.Tensor, half: int) -> tuple[torch.Tensor, int]:
    """Per-head sums of induction mass for weights (B, H, 2*half, 2*half) on repeated sequences.

    Query i in the second copy (i >= half) repeats the token at i - half, whose
    successor sits at key i - half + 1: the diagonal at offset -(half - 1).
    """
    B = w.shape[0]
    diag = w.float().diagonal(offset=-(half - 1), dim1=-2, dim2=-1)  # queries half-1 .. 2*half-1
    return diag[..., 1:].sum(dim=(0, 2)), B * half


def output_norm_sums(y: torch.Tensor, c_proj_weight: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per-head sums of ||y_h W_proj[:, h]^T|| over batch and positions, for y (B, H, T, D)."""
    B, H, T, D = y.shape
    w = c_proj_weight.view(c_proj_weight.shape[0], H, D)
    written = torch.einsum("bhtd,chd->bhtc", y.float(), w.float())
    return written.norm(dim=-1).sum(dim=(0, 2)), B * T


@torch.no_grad()
def induction_scores(
    model: GPT, n_seq: int = 16, half: int | None = None, seed: int = 1337, batch_size: int = 8
) -> np.ndarray:
    """(n_layer, n_head) induction scores of `model` on repeated random tokens."""
    cfg = model.config
    half = half or cfg.block_size // 2
    idx = repeated_random_tokens(n_seq, half, cfg.vocab_size, seed)
    sums = torch.zeros(cfg.n_layer, cfg.n_head)
    count = 0
    device = next(model.parameters()).device
    for start in range(0, n_seq, batch_size):
        probe = Probe(need_weights=True)
        model.hidden(idx[start : start + batch_size].to(device), probe=probe)
        _check_weights(probe, cfg.n_layer, cfg.attention)
        for layer, w in enumerate(probe.weights):
            s, c = induction_sums(w, half)
            sums[layer] += s.cpu()
        count += c
    return (sums / count).numpy()


def _check_weights(probe: Probe, n_layer: int, kind: str) -> None:
    if len(probe.weights) != n_layer:
        raise RuntimeError(
            f"attention kind {kind!r} returned weights for {len(probe.weights)} of {n_layer} layers"
        )


# -- ablation -------------------------------------------------------------------
def head_ablation_probe(
    model: GPT, layer: int, head: int, fill: torch.Tensor | None = None
) -> Probe:
    """A probe that removes one head: zeroes its output, or replaces it by `fill` (L, H, D)."""
    cfg = model.config
    device = next(model.parameters()).device
    mask = torch.ones(cfg.n_layer, cfg.n_head, device=device)
    mask[layer, head] = 0.0
    return Probe(head_mask=mask, head_fill=None if fill is None else fill.to(device))


class LossHead:
    """The LM head for losses only: per-row cross-entropy in chunks, in one reused buffer.

    An ablation sweep computes 2 * n_layer * n_head of these over the same rows,
    so the transposed weight is copied once (a contiguous (C, V) matrix multiplies
    ~20% faster than the transposed view) and the logits buffer is reused (a fresh
    100 MB block per chunk cost more in page faults than the matmul itself).
    """

    def __init__(self, model: GPT) -> None:
        head = model.lm_head
        self.vocab = model.config.vocab_size
        self.weight_t = head.weight.detach().t().float().contiguous()
        self.bias = None if head.bias is None else head.bias.detach().float()
        self._buf: torch.Tensor | None = None

    def _buffer(self, rows: int) -> torch.Tensor:
        if self._buf is None or self._buf.shape[0] < rows:
            self._buf = torch.empty(rows, self.weight_t.shape[1], dtype=torch.float32, device=self.weight_t.device)
        return self._buf[:rows]

    @torch.no_grad()
    def losses(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy per window from final hidden states (B, T, C), in fp32."""
        h = h.flatten(0, 1)
        flat = targets.flatten()
        buf = self._buffer(min(LOSS_CHUNK_ROWS, h.shape[0]))
        losses = torch.empty(flat.shape[0], device=h.device)
        for s in range(0, h.shape[0], buf.shape[0]):
            chunk = h[s : s + buf.shape[0]]
            logits = buf[: chunk.shape[0]]
            torch.mm(chunk.float(), self.weight_t, out=logits)
            if self.bias is not None:
                logits += self.bias
            logits = logits[:, : self.vocab]  # the padded rows are no tokens
            picked = logits.gather(1, flat[s : s + chunk.shape[0], None])[:, 0]
            top = logits.amax(dim=1, keepdim=True)
            lse = top[:, 0] + logits.sub_(top).exp_().sum(dim=1).log()
            losses[s : s + chunk.shape[0]] = lse - picked
        return losses.view(targets.shape).mean(dim=1)


@torch.no_grad()
def sequence_losses(
    model: GPT, windows: torch.Tensor, probe: Probe | None = None, head: LossHead | None = None
) -> torch.Tensor:
    """Mean next-token cross-entropy of each window (B,), computed in chunks of rows."""
    idx, targets = windows[:, :-1], windows[:, 1:]
    return (head or LossHead(model)).losses(model.hidden(idx, probe=probe), targets)


@torch.no_grad()
def block_inputs(model: GPT, idx: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream entering each block (n_layer tensors (B, T, C)), plus the
    final one after the last block, from one pass without a probe."""
    x = model.embed(idx)
    inputs = [x]
    for block in model.transformer.h:
        x = block(x, None, None)
        inputs.append(x)
    return inputs


@torch.no_grad()
def losses_from_layer(
    model: GPT,
    inputs: list[torch.Tensor],
    layer: int,
    targets: torch.Tensor,
    probe: Probe | None = None,
    head: LossHead | None = None,
) -> torch.Tensor:
    """`sequence_losses` for a probe that changes nothing before `layer`, resumed there.

    Blocks before `layer` would compute exactly what `inputs` (from
    `block_inputs`) holds (a head mask of ones multiplies by 1.0), so they are
    skipped; the result is bit-identical to the full pass.
    """
    x = inputs[layer]
    for block in model.transformer.h[layer:]:
        x = block(x, None, probe)
    return (head or LossHead(model)).losses(model.transformer.ln_f(x), targets)


# -- the whole inspection -----------------------------------------------------------
PATTERN_KEYS = ("entropy", "distance", "sink", "previous_token")


@torch.no_grad()
def _text_batch_sums(model: GPT, x: torch.Tensor):
    """One forward pass with the probe: per-layer (L, H) sums of the pattern statistics and
    output norms, the (L, H, D) sum of head outputs, and the row/position counts."""
    cfg = model.config
    probe = Probe(need_weights=True, capture_heads=True)
    model.hidden(x, probe=probe)
    _check_weights(probe, cfg.n_layer, cfg.attention)
    sums = {key: torch.zeros(cfg.n_layer, cfg.n_head) for key in (*PATTERN_KEYS, "output_norm")}
    y_sum = torch.zeros(cfg.n_layer, cfg.n_head, cfg.head_dim, dtype=torch.float64)
    for layer in range(cfg.n_layer):
        s, rows = pattern_sums(probe.weights[layer])
        for key in PATTERN_KEYS:
            sums[key][layer] = s[key].cpu()
        y = probe.head_outputs[layer]
        n, positions = output_norm_sums(y, model.transformer.h[layer].attn.c_proj.weight)
        sums["output_norm"][layer] = n.cpu()
        y_sum[layer] = y.double().sum(dim=(0, 2)).cpu()
    return sums, y_sum, rows, positions


def ablation_picks(n_seq: int, n_pick: int) -> torch.Tensor:
    """Indices of `n_pick` of `n_seq` windows, evenly spaced from the first to the last."""
    return torch.linspace(0, n_seq - 1, n_pick).round().long()


def _batch_size(cfg, seq_len: int) -> int:
    per_seq = cfg.n_layer * cfg.n_head * seq_len * seq_len * 4 * 3
    return max(1, min(16, WEIGHTS_BUDGET_BYTES // per_seq))


def iter_inspect_heads(
    model: GPT,
    windows: torch.Tensor,
    *,
    ablation_sequences: int | None = None,
    induction_sequences: int = 16,
    seed: int = 1337,
) -> Iterator[Progress | HeadReport]:
    """Measure every head of `model` on `windows` (n_seq, seq_len + 1); yields progress, then the report.

    Attention statistics, output norms and head means use all windows;
    ablation (baseline and ablated losses, on the same windows) uses
    `ablation_sequences` of them, evenly spaced, as it costs 2 * n_layer * n_head
    forward passes through the LM head. The model is put in eval mode meanwhile.
    """
    cfg = model.config
    L, H, D = cfg.n_layer, cfg.n_head, cfg.head_dim
    n_seq, seq_len = windows.shape[0], windows.shape[1] - 1
    if seq_len > cfg.block_size:
        raise UserError(f"--seq-len {seq_len}: longer than the model's context of {cfg.block_size}")
    n_abl = n_seq if ablation_sequences is None else max(1, min(ablation_sequences, n_seq))
    half = max(1, min(seq_len, cfg.block_size) // 2)  # induction sequences are seq_len long
    device = next(model.parameters()).device
    bs = _batch_size(cfg, seq_len)
    seconds: dict[str, float] = {}
    was_training = model.training
    model.eval()
    try:
        # 1. attention weights and head outputs on the text
        t0 = time.perf_counter()
        sums = {key: torch.zeros(L, H) for key in (*PATTERN_KEYS, "output_norm")}
        head_sum = torch.zeros(L, H, D, dtype=torch.float64)
        rows = positions = 0
        for start in range(0, n_seq, bs):
            s, y_sum, r, c = _text_batch_sums(model, windows[start : start + bs, :-1].to(device))
            for key in sums:
                sums[key] += s[key]
            head_sum += y_sum
            rows += r
            positions += c
            yield Progress("attention statistics", min(start + bs, n_seq), n_seq)
        stats = {key: (sums[key] / rows).numpy() for key in PATTERN_KEYS}
        head_mean = (head_sum / positions).float()
        seconds["attention_statistics"] = time.perf_counter() - t0

        # 2. induction on repeated random tokens (independent of the text)
        t0 = time.perf_counter()
        induction = induction_scores(model, induction_sequences, half, seed, bs)
        seconds["induction"] = time.perf_counter() - t0
        yield Progress("induction", induction_sequences, induction_sequences)

        # 3. ablation: baseline and each head removed, on the same windows
        t0 = time.perf_counter()
        abl = windows[ablation_picks(n_seq, n_abl)].to(device)
        abl_bs = ABLATION_BATCH
        total = 1 + 2 * L * H
        # Residual inputs of every block, per batch: an ablation in layer l reruns only blocks l..L-1.
        batches = []
        for s in range(0, n_abl, abl_bs):
            chunk = abl[s : s + abl_bs]
            batches.append((block_inputs(model, chunk[:, :-1]), chunk[:, 1:]))
        loss_head = LossHead(model)
        base = torch.cat([losses_from_layer(model, inputs, L, targets, None, loss_head) for inputs, targets in batches])
        yield Progress("ablation", 1, total)
        per_seq = {mode: torch.zeros(L, H, n_abl) for mode in ("zero", "mean")}
        done = 1
        for layer in range(L):
            for head in range(H):
                for mode, fill in (("zero", None), ("mean", head_mean)):
                    probe = head_ablation_probe(model, layer, head, fill)
                    per_seq[mode][layer, head] = torch.cat(
                        [
                            losses_from_layer(model, inputs, layer, targets, probe, loss_head).cpu()
                            for inputs, targets in batches
                        ]
                    )
                    done += 1
                    yield Progress("ablation", done, total)
        del batches, loss_head
        seconds["ablation"] = time.perf_counter() - t0
    finally:
        model.train(was_training)

    base = base.cpu()
    loss = {m: per_seq[m].mean(dim=-1).double().numpy() for m in per_seq}
    se = {m: _paired_se(per_seq[m], base) for m in per_seq}
    yield HeadReport(
        n_layer=L,
        n_head=H,
        attention=cfg.attention,
        tokens=n_seq * seq_len,
        sequences=n_seq,
        seq_len=seq_len,
        ablation_sequences=n_abl,
        induction_sequences=induction_sequences,
        induction_half=half,
        seed=seed,
        baseline_loss=float(base.double().mean()),
        entropy=stats["entropy"],
        distance=stats["distance"],
        sink=stats["sink"],
        previous_token=stats["previous_token"],
        induction=induction,
        output_norm=(sums["output_norm"] / positions).numpy(),
        zero_ablation_loss=loss["zero"],
        mean_ablation_loss=loss["mean"],
        zero_ablation_se=se["zero"],
        mean_ablation_se=se["mean"],
        seconds=seconds,
    )


def _paired_se(ablated: torch.Tensor, base: torch.Tensor) -> np.ndarray:
    """Standard error of the mean loss change, from per-window differences (same windows)."""
    n = base.shape[0]
    if n < 2:
        return np.full(ablated.shape[:2], np.nan)
    diff = (ablated - base).double()
    return (diff.std(dim=-1, correction=1) / math.sqrt(n)).numpy()


def inspect_heads(model: GPT, windows: torch.Tensor, **kw) -> HeadReport:
    """`iter_inspect_heads` without the progress events."""
    for event in iter_inspect_heads(model, windows, **kw):
        if isinstance(event, HeadReport):
            return event
    raise AssertionError("iter_inspect_heads ended without a report")


def attention_pattern(model: GPT, ids: list[int], layer: int, head: int) -> np.ndarray:
    """One head's attention weights (T, T) on the token ids `ids`."""
    cfg = model.config
    if not 0 <= layer < cfg.n_layer:
        raise UserError(f"--layer {layer}: the model has layers 0..{cfg.n_layer - 1}")
    if not 0 <= head < cfg.n_head:
        raise UserError(f"--head {head}: the model has heads 0..{cfg.n_head - 1}")
    if not ids:
        raise UserError("TEXT: empty, nothing to attend to")
    if len(ids) > cfg.block_size:
        raise UserError(
            f"TEXT: {len(ids)} tokens, more than the model's context of {cfg.block_size}"
        )
    if max(ids) >= cfg.vocab_size:
        raise UserError(
            f"TEXT: token id {max(ids)} does not fit the model's vocab_size {cfg.vocab_size}"
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        probe = Probe(need_weights=True)
        with torch.no_grad():
            model.hidden(torch.tensor([ids], device=device), probe=probe)
    finally:
        model.train(was_training)
    _check_weights(probe, cfg.n_layer, cfg.attention)
    return probe.weights[layer][0, head].float().cpu().numpy()
