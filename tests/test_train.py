"""The training step's maths: overfitting, gradient accumulation, optimizer groups,
the optimised loss against the plain one, and skipped non-finite updates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt2cli.config import TrainConfig
from gpt2cli.train.optim import build_optimizer, param_groups
from gpt2cli.train.schedule import lr_at
from gpt2cli.train.step import accumulate_gradients, grad_norm
from tests.conftest import tiny_model

CPU = torch.device("cpu")


def fixed_batch(batch: int, T: int = 32, vocab: int = 128, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, vocab, (batch, T + 1), generator=g)
    return data[:, :-1], data[:, 1:]


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_overfits_one_fixed_batch():
    model = tiny_model(0, n_embd=64, n_head=4, vocab_size=128).train()
    cfg = TrainConfig(steps=80, warmup_steps=5, lr=1e-2, min_lr=1e-3, weight_decay=0.0)
    opt = build_optimizer(model, cfg, CPU)
    x, y = fixed_batch(4)
    params = list(model.parameters())
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        loss = accumulate_gradients(model.loss, [(x, y)], 1, device=CPU)
        grad_norm(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        final = F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
    assert loss.item() < 0.1 and final < 0.1, (loss.item(), final)


def test_grad_accumulation_matches_the_whole_batch():
    x, y = fixed_batch(8, seed=1)
    whole = tiny_model(3, vocab_size=128).train()
    split = tiny_model(3, vocab_size=128).train()
    loss_whole = accumulate_gradients(whole.loss, [(x, y)], 1, device=CPU)
    loss_split = accumulate_gradients(split.loss, [(x[:4], y[:4]), (x[4:], y[4:])], 2, device=CPU)
    assert loss_whole.item() == pytest.approx(loss_split.item(), abs=1e-6)
    ga, gb = grads(whole), grads(split)
    assert ga.keys() == gb.keys() and len(ga) > 0
    worst = max((ga[n] - gb[n]).abs().max().item() for n in ga)
    assert worst <= 1e-6, worst


def test_optimised_loss_matches_plain_cross_entropy():
    # Chunked CE through the padded, tied head vs full logits + F.cross_entropy.
    x, y = fixed_batch(4, vocab=200, seed=2)
    a = tiny_model(5, vocab_size=200).train()  # 200 pads to 256 rows inside the model
    b = tiny_model(5, vocab_size=200).train()
    assert a.transformer.wte.weight.shape[0] == 256
    loss_a = accumulate_gradients(lambda i, t: a.loss(i, t, chunk_rows=48), [(x, y)], 1, device=CPU)
    loss_b = F.cross_entropy(b(x).flatten(0, 1), y.flatten())
    loss_b.backward()
    assert loss_a.item() == pytest.approx(loss_b.item(), abs=1e-5)
    ga, gb = grads(a), grads(b)
    assert max((ga[n] - gb[n]).abs().max().item() for n in ga) <= 1e-5


def test_weight_decay_only_on_matrices():
    model = tiny_model(0)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    names = set(decay["names"]) | set(no_decay["names"])
    # Every trainable tensor exactly once (the tied head shares wte).
    assert len(names) == len(list(model.parameters()))
    assert "transformer.wte.weight" in decay["names"] and "transformer.h.0.ln_1.weight" in no_decay["names"]
    opt = build_optimizer(model, TrainConfig(beta1=0.8, beta2=0.9), CPU)
    assert opt.param_groups[0]["betas"] == (0.8, 0.9)


def test_adamw_matches_a_hand_written_update():
    # One AdamW step (Loshchilov & Hutter 2019, Alg. 2) on a matrix and a bias.
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    cfg = TrainConfig(lr=0.1, weight_decay=0.5, beta1=0.9, beta2=0.95)
    opt = build_optimizer(lin, cfg, CPU)
    gw, gb = torch.randn(2, 3), torch.randn(2)
    lin.weight.grad, lin.bias.grad = gw.clone(), gb.clone()
    opt.step()

    def expected(p, g, wd):
        m, v = 0.1 * g, 0.05 * g * g
        m_hat, v_hat = m / (1 - 0.9), v / (1 - 0.95)
        return p * (1 - 0.1 * wd) - 0.1 * m_hat / (v_hat.sqrt() + 1e-8)

    assert torch.allclose(lin.weight, expected(w0, gw, 0.5), atol=1e-6)
    assert torch.allclose(lin.bias, expected(b0, gb, 0.0), atol=1e-6)


def test_found_inf_skips_the_update():
    # The loop skips a non-finite step without a host sync via the fused kernel's flag.
    model = tiny_model(0).train()
    opt = build_optimizer(model, TrainConfig(), CPU)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    opt.found_inf = torch.tensor(1.0)
    opt.step()
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(float(s["step"]) == 0 for s in opt.state.values())
