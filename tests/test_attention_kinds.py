"""Each attention kind against a naive reference written here (loops over positions).

Kinds: standard (softmax), linear (elu+1 features, Katharopoulos et al. 2020),
gated (sigmoid output gate, Qiu et al. 2025). Forward and gradients in fp32
within 1e-5; causality; linear's recurrent decode against its parallel form;
attention weights for inspect; checkpoints round-trip.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gpt2cli.checkpoint import load_checkpoint, save_checkpoint
from gpt2cli.config import ATTENTION_KINDS
from gpt2cli.errors import UserError
from gpt2cli.model import GPT, Probe
from gpt2cli.model.attention import KINDS, build_attention
from gpt2cli.model.attention.gated import GATE_BIAS_INIT
from tests.conftest import run_cli, tiny_config, tiny_model

ALL_KINDS = ["standard", "linear", "gated"]
TOL = 1e-5


# -- naive references: one position at a time -------------------------------------------------


def naive_softmax(q, k, v):
    """y_i = sum_{j<=i} softmax_j(q_i.k_j / sqrt(D)) v_j, one query position at a time."""
    T, D = q.shape[2], q.shape[3]
    ys = []
    for i in range(T):
        s = (q[:, :, i : i + 1] @ k[:, :, : i + 1].transpose(-2, -1)) / math.sqrt(D)
        ys.append(torch.softmax(s, dim=-1) @ v[:, :, : i + 1])
    return torch.cat(ys, dim=2)


def phi(x):
    return F.elu(x) + 1


def naive_linear(q, k, v):
    """The RNN form, Katharopoulos et al. eq. 9: S_i, z_i accumulated one position at a time."""
    B, H, T, D = q.shape
    S = torch.zeros(B, H, D, v.shape[-1])
    z = torch.zeros(B, H, D)
    ys = []
    for i in range(T):
        fk, fq = phi(k[:, :, i]), phi(q[:, :, i])
        S = S + fk.unsqueeze(-1) * v[:, :, i].unsqueeze(-2)
        z = z + fk
        num = (fq.unsqueeze(-1) * S).sum(-2)
        den = (fq * z).sum(-1, keepdim=True)
        ys.append((num / den).unsqueeze(2))
    return torch.cat(ys, dim=2)


def naive_weights(kind, q, k):
    """Explicit (T x T) weights, row by row: softmax for standard/gated, phi(q_i).phi(k_j)/sum for linear."""
    B, H, T, D = q.shape
    w = torch.zeros(B, H, T, T)
    for i in range(T):
        if kind == "linear":
            s = (phi(q[:, :, i : i + 1]) * phi(k[:, :, : i + 1])).sum(-1)
            w[:, :, i, : i + 1] = s / s.sum(-1, keepdim=True)
        else:
            s = (q[:, :, i : i + 1] * k[:, :, : i + 1]).sum(-1) / math.sqrt(D)
            w[:, :, i, : i + 1] = torch.softmax(s, dim=-1)
    return w


def naive_mix(kind, q, k, v):
    return naive_linear(q, k, v) if kind == "linear" else naive_softmax(q, k, v)


def split_heads(attn, x):
    """q, k, v (B, H, T, D) from the module's c_attn, written out as x W^T + b."""
    B, T, C = x.shape
    qkv = x @ attn.c_attn.weight.t() + attn.c_attn.bias
    return [
        t.reshape(B, T, attn.n_head, attn.head_dim).transpose(1, 2) for t in qkv.split(C, dim=2)
    ]


def naive_module(kind, attn, x):
    """The whole attention sublayer: projections, naive mixing, the gated kind's gate, c_proj."""
    B, T, C = x.shape
    q, k, v = split_heads(attn, x)
    y = naive_mix(kind, q, k, v).transpose(1, 2).reshape(B, T, C)
    if kind == "gated":
        y = y * torch.sigmoid(x @ attn.c_gate.weight.t() + attn.c_gate.bias)
    return y @ attn.c_proj.weight.t() + attn.c_proj.bias


def randomise_gates(model: GPT, seed: int = 0) -> None:
    """The gate starts constant (W_g = 0); give it weights so the tests exercise x -> gate."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "c_gate" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def set_chunk(model: GPT, chunk: int) -> None:
    for block in model.transformer.h:
        if block.attn.kind == "linear":
            block.attn.chunk_size = chunk


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


# -- registry -------------------------------------------------------------------------------


def test_registry_covers_every_configurable_kind():
    assert set(KINDS) == set(ATTENTION_KINDS) == set(ALL_KINDS)
    for kind in ALL_KINDS:
        assert build_attention(tiny_config(attention=kind), 0).kind == kind


def test_unknown_kind_is_a_user_error():
    # model_copy skips validation, so the config's own check does not stop it first.
    cfg = tiny_config().model_copy(update={"attention": "sparse"})
    with pytest.raises(
        UserError, match="attention kind 'sparse' is not implemented.*standard, linear, gated"
    ):
        build_attention(cfg, 0)


# -- Done when 1: forward and gradients against the naive reference ---------------------------


@pytest.mark.parametrize("chunk", [4, 64], ids=["many-chunks", "one-chunk"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_mix_matches_naive_forward_and_grads(kind, chunk):
    torch.manual_seed(1)
    attn = build_attention(tiny_config(attention=kind, n_head=3, n_embd=24), 0).eval()
    attn.chunk_size = chunk  # only linear reads it
    B, H, T, D = 2, 3, 19, 8  # T = 4 full chunks of 4 + a partial one
    leaves = [torch.randn(B, H, T, D, requires_grad=True) for _ in range(3)]
    upstream = torch.randn(B, H, T, D)

    y, w = attn.mix(*leaves, state=None, need_weights=False)
    assert w is None
    got = torch.autograd.grad(y, leaves, upstream)
    ref_y = naive_mix(kind, *leaves)
    ref = torch.autograd.grad(ref_y, leaves, upstream)

    assert max_diff(y, ref_y) <= TOL
    for name, g, r in zip("qkv", got, ref, strict=True):
        assert max_diff(g, r) <= TOL, f"d/d{name}"


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_attention_sublayer_matches_naive_forward_and_grads(kind):
    model = tiny_model(2, attention=kind, n_head=4, n_embd=32)
    randomise_gates(model)
    set_chunk(model, 8)
    attn = model.transformer.h[0].attn
    with torch.no_grad():  # GPT-2 zero-inits biases; make them count
        for p in attn.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    x = torch.randn(2, 27, 32, requires_grad=True)
    upstream = torch.randn(2, 27, 32)
    params = dict(attn.named_parameters())
    inputs = [x, *params.values()]

    out = attn(x)
    got = torch.autograd.grad(out, inputs, upstream)
    ref_out = naive_module(kind, attn, x)
    ref = torch.autograd.grad(ref_out, inputs, upstream)

    assert max_diff(out, ref_out) <= TOL
    for name, g, r in zip(["x", *params], got, ref, strict=True):
        assert max_diff(g, r) <= TOL, name
    if kind == "gated":
        assert "c_gate.weight" in params and "c_gate.bias" in params


# -- Done when 2: causality --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_changing_a_token_leaves_earlier_logits_exactly_unchanged(kind):
    # Exact equality holds for the chunked linear form too: a later key enters an earlier
    # query's sums only through masked entries that are exactly 0 (0 * v adds +-0.0), and the
    # carried sums before chunk n are prefix sums over chunks < n only.
    model = tiny_model(3, attention=kind, block_size=48)
    randomise_gates(model)
    set_chunk(model, 8)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 128, (2, 40), generator=g)
    with torch.no_grad():
        base = model(idx)
        for t in (0, 7, 8, 21, 39):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1 + torch.randint(0, 127, (2,), generator=g)) % 128
            out = model(changed)
            assert torch.equal(out[:, :t], base[:, :t]), f"position {t} leaked backwards"
            assert not torch.equal(out[:, t], base[:, t])


# -- Done when 3 (and the KV-cache kinds): incremental decoding equals the parallel forward ----


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_token_by_token_decode_matches_parallel_forward(kind):
    model = tiny_model(4, attention=kind, block_size=128)
    randomise_gates(model)
    set_chunk(model, 16)
    idx = torch.randint(0, 128, (2, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(idx)
        state = model.new_state(2)
        sizes = []
        for t in range(100):
            step = model(idx[:, t : t + 1], state=state, last_only=True)
            assert max_diff(step[:, 0], full[:, t]) <= TOL, f"token {t}"
            sizes.append(state.nbytes())
        assert state.pos == 100
        # A prefill, a second multi-token segment continuing from the state, then steps.
        state = model.new_state(2)
        pre = model(idx[:, :37], state=state)
        assert max_diff(pre, full[:, :37]) <= TOL
        seg = model(idx[:, 37:57], state=state)
        assert max_diff(seg, full[:, 37:57]) <= TOL
        for t in range(57, 65):
            step = model(idx[:, t : t + 1], state=state, last_only=True)
            assert max_diff(step[:, 0], full[:, t]) <= TOL
    assert sizes[0] == sizes[-1]


def test_linear_decode_state_has_constant_size():
    model = tiny_model(5, attention="linear", block_size=128)
    cfg = model.config
    # S (B, H, D, D) and z (B, H, D) in fp32 per layer; nothing indexed by position.
    expected = cfg.n_layer * 1 * cfg.n_head * (cfg.head_dim**2 + cfg.head_dim) * 4
    state = model.new_state(1)
    assert state.nbytes() == expected
    assert model.new_state(1, max_len=8).nbytes() == expected  # max_len does not size it
    with torch.no_grad():
        model(torch.tensor([[3]]), state=state)
        after_one = state.nbytes()
        for t in range(99):
            model(torch.tensor([[t % 128]]), state=state, last_only=True)
    assert state.pos == 100
    assert after_one == state.nbytes() == expected
    # A KV cache, by contrast, holds every position it may reach.
    standard = tiny_model(5, block_size=128)
    assert standard.new_state(1, max_len=100).nbytes() > 10 * expected


def test_linear_weights_need_a_fresh_state():
    model = tiny_model(5, attention="linear")
    state = model.new_state(1)
    with torch.no_grad():
        model(torch.tensor([[1, 2]]), state=state)
        with pytest.raises(ValueError, match="fresh state"):
            model(torch.tensor([[3]]), state=state, probe=Probe(need_weights=True))


# -- attention weights for inspect ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_attention_weights_are_causal_rows_summing_to_one_and_match_naive(kind):
    model = tiny_model(6, attention=kind)
    randomise_gates(model)
    set_chunk(model, 8)
    idx = torch.randint(0, 128, (2, 21), generator=torch.Generator().manual_seed(2))
    inputs = []
    hooks = [
        b.attn.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
        for b in model.transformer.h
    ]
    probe = Probe(need_weights=True)
    with torch.no_grad():
        with_probe = model(idx, probe=probe)
        plain = model(idx)
    for h in hooks:
        h.remove()

    # Asking for weights does not change the outputs (softmax kinds take an explicit path then).
    assert max_diff(with_probe, plain) <= TOL
    assert len(probe.weights) == model.config.n_layer
    for layer, w in enumerate(probe.weights):
        assert w.shape == (2, model.config.n_head, 21, 21)
        assert max_diff(w.sum(-1), torch.ones(2, model.config.n_head, 21)) <= TOL
        assert torch.all(w.triu(1) == 0)
        assert torch.all(w[..., torch.ones(21, 21, dtype=torch.bool).tril()] > 0)
        q, k, _ = split_heads(model.transformer.h[layer].attn, inputs[layer])
        assert max_diff(w, naive_weights(kind, q, k)) <= TOL


# -- linear attention in bf16 ---------------------------------------------------------------------


def test_linear_is_stable_under_bf16_autocast():
    attn = build_attention(tiny_config(attention="linear", n_head=2, n_embd=32), 0).eval()
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 1024, 16, generator=g) * 3 for _ in range(3))
    ref, _ = attn.mix(q, k, v, None, False)  # fp32, already checked against the loops above
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = attn.mix(q.bfloat16(), k.bfloat16(), v.bfloat16(), None, False)
    assert y.dtype == torch.bfloat16
    # Only the bf16 rounding of the inputs and the output remains: ~3 significant digits.
    assert max_diff(y.float(), ref) <= 0.05 * ref.abs().max().item()


def test_linear_denominator_is_guarded_when_features_underflow():
    attn = build_attention(tiny_config(attention="linear", n_head=2, n_embd=32), 0).eval()
    q = torch.full((1, 2, 10, 16), -200.0, requires_grad=True)  # elu(-200) + 1 == 0 in fp32
    k = torch.full((1, 2, 10, 16), -200.0, requires_grad=True)
    v = torch.randn(1, 2, 10, 16, requires_grad=True)
    y, _ = attn.mix(q, k, v, None, False)
    y.sum().backward()
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


# -- gated: starts close to standard attention -----------------------------------------------------


def test_gate_starts_near_one_so_gated_starts_as_scaled_standard():
    gated = tiny_model(7, attention="gated")
    for block in gated.transformer.h:
        assert torch.all(block.attn.c_gate.weight == 0)
        assert torch.all(block.attn.c_gate.bias == GATE_BIAS_INIT)
    standard = tiny_model(7)
    standard.load_state_dict({k: v for k, v in gated.state_dict().items() if "c_gate" not in k})
    attn_g, attn_s = gated.transformer.h[0].attn, standard.transformer.h[0].attn
    with torch.no_grad():  # a non-zero c_proj bias, the same in both: it must pass through ungated
        bias = torch.randn(32) * 0.1
        attn_g.c_proj.bias.copy_(bias)
        attn_s.c_proj.bias.copy_(bias)
    x = torch.randn(2, 16, 32)
    with torch.no_grad():
        got = attn_g(x) - bias
        want = (attn_s(x) - bias) * torch.sigmoid(torch.tensor(GATE_BIAS_INIT))
    assert max_diff(got, want) <= 1e-6
    assert torch.sigmoid(torch.tensor(GATE_BIAS_INIT)).item() > 0.98


# -- every kind trains (the library path `gpt2 train` uses) -----------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_each_kind_fits_a_fixed_batch(kind):
    model = tiny_model(10, attention=kind).train()
    idx = torch.randint(0, 128, (4, 33), generator=torch.Generator().manual_seed(4))
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the mixed-precision path training takes
            loss = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0]
    if kind == "gated":  # the gate learns from x, not just its bias
        assert model.transformer.h[0].attn.c_gate.weight.abs().max() > 0


# -- checkpoints and conversion ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "gated"])
def test_checkpoint_round_trip_keeps_kind_and_every_weight(tmp_path, kind):
    model = tiny_model(8, attention=kind)
    randomise_gates(model)
    save_checkpoint(model, tmp_path / "m.safetensors", step=3)
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.config.attention == kind
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    idx = torch.randint(0, 128, (1, 32))
    with torch.no_grad():
        assert torch.equal(model(idx), loaded.eval()(idx))


def test_to_hf_refuses_linear_attention_with_one_line(tmp_path):
    save_checkpoint(tiny_model(9, attention="linear"), tmp_path / "lin.safetensors")
    res = run_cli("convert", "to-hf", tmp_path / "lin.safetensors", tmp_path / "hf")
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1
    assert (
        "lin.safetensors" in lines[0]
        and "linear attention" in lines[0]
        and "only standard" in lines[0]
    )
    assert not (tmp_path / "hf" / "model.safetensors").exists()
