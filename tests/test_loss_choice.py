"""Which training loss runs (`--loss auto|chunked|full`, issue 17) and that both give the same step.

The policy (memory.choose_loss) is a pure function, checked here with fake
GPU sizes. The full-logits loss and the chunked one must give the same loss
and gradients through `train_step`, and both those of transformers'
GPT2LMHeadModel (the independent reference) holding the same weights.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from gpt2cli.config import TrainConfig
from gpt2cli.convert import from_hf
from gpt2cli.memory import FULL_LOGITS_SHARE, choose_loss, full_logits_bytes, training_need
from gpt2cli.train import distributed
from gpt2cli.train.optim import build_optimizer
from gpt2cli.train.run_dir import read_jsonl
from gpt2cli.train.step import train_step
from tests.conftest import run_cli, set_flags, tiny_config, tiny_model
from tests.test_model_reference import SHAPES, hf_model
from tests.test_resume import SETTINGS, stories_data  # noqa: F401  (a fixture)
from tests.test_train_step import capture_grads

CPU = torch.device("cpu")
GiB = 2**30
SMALL = dict(batch_size=16, block_size=1024, padded_vocab=50304, dtype_bytes=2)  # the small preset, bf16


def choose(requested="auto", device_type="cuda", compiled=True, total_memory=80 * GiB, **kw):
    return choose_loss(requested, device_type=device_type, compiled=compiled, total_memory=total_memory,
                       **{**SMALL, **kw})


# -- the policy ------------------------------------------------------------------------------
def test_full_logits_estimate_is_the_stated_arithmetic():
    # B x T x padded vocab x (bf16 logits 2 + fp32 copy 4 + fp32 gradient 4)
    assert full_logits_bytes(16, 1024, 50304, 2) == 16 * 1024 * 50304 * 10 == 8_241_807_360
    assert full_logits_bytes(2, 8, 64, 4) == 2 * 8 * 64 * 12


def test_auto_is_full_only_compiled_on_cuda_when_the_logits_fit():
    c = choose()  # 8.2 GB of logits, 80 GiB / 8 = 10 GiB budget
    assert c.kind == "full" and c.full
    assert c.describe() == "loss: full logits (auto: compiled on CUDA, 7.7 GiB of logits per micro-batch fit in " \
                           "1/8 of the GPU's 80.0 GiB)"
    assert choose(device_type="cpu", total_memory=None).kind == "chunked"
    assert choose(device_type="mps", total_memory=None).kind == "chunked"
    assert choose(compiled=False).kind == "chunked"  # eager CUDA: not measured faster
    assert choose(sharded=True).kind == "chunked"
    assert choose(activation_checkpointing=True).kind == "chunked"
    assert choose(total_memory=None).kind == "chunked"  # unknown memory: no risk taken


def test_auto_budget_is_one_eighth_of_the_device():
    need = full_logits_bytes(**SMALL)
    assert choose(total_memory=need * FULL_LOGITS_SHARE).kind == "full"  # exactly at the budget
    small_gpu = choose(total_memory=need * FULL_LOGITS_SHARE - 1)
    assert small_gpu.kind == "chunked"
    assert "7.7 GiB of logits per micro-batch, more than 1/8 of the GPU's" in small_gpu.reason
    assert choose(total_memory=24 * GiB).kind == "chunked"  # a 24 GB card at 16 x 1024
    assert choose(total_memory=24 * GiB, batch_size=4).kind == "full"  # ... at 4 x 1024
    assert choose(total_memory=80 * GiB, block_size=8192).kind == "chunked"  # a long context


def test_explicit_values_override_auto():
    assert choose("chunked").kind == "chunked"
    assert choose("chunked").describe() == "loss: chunked cross-entropy (--loss chunked)"
    for kw in (dict(device_type="cpu", total_memory=None), dict(compiled=False), dict(sharded=True),
               dict(total_memory=GiB)):
        assert choose("full", **kw).kind == "full", kw
    assert choose("full").reason == "--loss full; 7.7 GiB of logits per micro-batch"
    with pytest.raises(ValueError, match="unknown loss 'fast'"):
        choose("fast")


def test_explicit_full_counts_its_logits_in_the_memory_check():
    cfg = tiny_config(vocab_size=300)
    plain = training_need(cfg, 4, 32)
    full = training_need(cfg, 4, 32, full_logits=True)
    assert full.parts["full logits (--loss full)"] == full_logits_bytes(4, 32, 320, 2)
    assert full.total == plain.total + full_logits_bytes(4, 32, 320, 2)


# -- the same step either way, and the reference's ----------------------------------------------
def test_loss_module_calls_the_chosen_loss():
    """What DDP and FSDP wrap: forward is the run's loss; full=False in a call gives the chunked one."""
    model = tiny_model(1, vocab_size=300)
    x, y = torch.randint(0, 300, (2, 16)), torch.randint(0, 300, (2, 16))
    with torch.no_grad():
        chunked, full = model.loss(x, y), model.full_loss(x, y)
        assert torch.equal(distributed.LossModule(model, full=True)(x, y), full)
        assert torch.equal(distributed.LossModule(model, full=True)(x, y, full=False), chunked)
        assert torch.equal(distributed.LossModule(model)(x, y), chunked)
        assert torch.equal(model(x, y)[1], full)  # forward(idx, targets) is the same full loss
    single = distributed.Dist()
    assert distributed.wrap_model(model, single, CPU, None, full=True) == model.full_loss
    assert distributed.wrap_model(model, single, CPU, None) == model.loss


def _step(model, x, y, full: bool):
    """One `train_step` (no clipping) through the loss the trainer would wrap; its loss, norm, gradients."""
    model = copy.deepcopy(model).train()
    loss_fn = distributed.wrap_model(model, distributed.Dist(), CPU, None, full=full)
    opt = build_optimizer(model, TrainConfig(), CPU)
    grads = capture_grads(opt, {id(p): n for n, p in model.named_parameters()})
    out = train_step(loss_fn, opt, [(x, y)], 1, params=list(model.parameters()), device=CPU, max_norm=0.0)
    return out.loss.item(), out.grad_norm.item(), grads


def test_full_and_chunked_steps_match_each_other_and_transformers(tmp_path):
    shape = SHAPES[0]  # 2 layers, 4 heads, 64 wide, vocabulary 300 (padded to 320 in ours)
    hf = hf_model(5, **shape)
    hf.save_pretrained(tmp_path / "hf")
    ours = from_hf(tmp_path / "hf", tmp_path / "ours.safetensors")
    V = shape["vocab_size"]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, V, (3, 40), generator=g), torch.randint(0, V, (3, 40), generator=g)
    y[1, :4] = -1  # ignored targets

    # The reference: transformers' logits, F.cross_entropy, autograd.
    hf.train()
    ref_loss = F.cross_entropy(hf(x).logits.flatten(0, 1), y.flatten(), ignore_index=-1)
    ref_loss.backward()
    ref_grads = dict(hf.named_parameters())
    ref_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in hf.parameters()])).item()

    full_loss, full_norm, full_grads = _step(ours, x, y, full=True)
    chunk_loss, chunk_norm, chunk_grads = _step(ours, x, y, full=False)
    assert full_loss == pytest.approx(chunk_loss, rel=1e-5) and full_norm == pytest.approx(chunk_norm, rel=1e-5)
    assert full_grads.keys() == chunk_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(grad, chunk_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    assert full_loss == pytest.approx(ref_loss.item(), rel=1e-5)
    assert full_norm == pytest.approx(ref_norm, rel=1e-5)
    compared = 0
    for name, p in ref_grads.items():
        if name not in full_grads:  # lm_head.weight: tied, its gradient is wte's
            continue
        grad = full_grads[name]
        if name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            grad = grad.t()  # HF's Conv1D keeps (in, out), nn.Linear (out, in)
        elif name == "transformer.wte.weight":
            grad = grad[:V]  # ours has 20 padding rows, which get no gradient
        torch.testing.assert_close(grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)
        compared += 1
    assert compared == len(full_grads)
    assert full_grads["transformer.wte.weight"][V:].abs().max().item() == 0.0


# -- through the CLI ---------------------------------------------------------------------------
def _run(data, out, *extra):
    args = ["train", "--preset", "tiny", "--data", str(data), "--out", str(out), *set_flags(SETTINGS)]
    r = run_cli(*args, "--steps", "3", "--set", "train.eval_every=100", *extra)
    assert r.code == 0, r.err
    losses = {m["step"]: m["loss"] for m in read_jsonl(out / "metrics.jsonl") if "loss" in m}
    return r, losses, json.loads((out / "config.json").read_text())


def test_cli_full_and_chunked_losses_agree(stories_data, tmp_path):  # noqa: F811
    r_full, full, cfg_full = _run(stories_data, tmp_path / "full", "--loss", "full")
    r_auto, auto, cfg_auto = _run(stories_data, tmp_path / "auto")
    assert "loss: full logits (--loss full; " in r_full.err
    assert "loss: chunked cross-entropy (auto: on cpu, full logits only on CUDA with --compile)" in r_auto.err
    assert cfg_full["train"]["loss"] == "full" and cfg_full["loss"]["kind"] == "full"
    assert cfg_auto["train"]["loss"] == "auto" and cfg_auto["loss"]["kind"] == "chunked"
    assert sorted(full) == sorted(auto) == [1, 2, 3]
    assert abs(full[1] - auto[1]) <= 1e-5
    for step in (2, 3):  # the updates agree too, to float rounding
        assert abs(full[step] - auto[step]) <= 1e-4, step


@pytest.mark.slow
def test_cli_full_loss_compiles_on_the_cpu(stories_data, tmp_path):  # noqa: F811
    """torch.compile through the whole loss (one graph, no break at the LM head): ~30 s of compiling."""
    # No dropout: compiled code draws its masks from another generator than eager code.
    r, losses, cfg = _run(stories_data, tmp_path / "compiled", "--loss", "full", "--compile", "--dropout", "0")
    _, eager, _ = _run(stories_data, tmp_path / "eager", "--loss", "chunked", "--dropout", "0")
    assert cfg["train"]["compile"] and cfg["loss"]["kind"] == "full"
    assert "loss: full logits (--loss full; " in r.err
    assert abs(losses[1] - eager[1]) <= 1e-5
    for step in (2, 3):
        assert abs(losses[step] - eager[step]) <= 1e-4, step
