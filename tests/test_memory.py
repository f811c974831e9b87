"""Memory needs estimated up front: the figures, and refusals with them before anything is allocated."""

from __future__ import annotations

import pytest
import torch

import gpt2cli.memory
from gpt2cli.errors import UserError
from gpt2cli.memory import (
    check_training_memory,
    decoding_need,
    parameter_count,
    require_fits,
    total_device_memory,
    training_need,
)
from gpt2cli.model import GPT
from tests.conftest import tiny_config


@pytest.mark.parametrize("kw", [{}, {"bias": False}, {"vocab_size": 50257, "n_embd": 64, "n_head": 4, "n_layer": 3}])
def test_parameter_count_matches_the_model(kw):
    cfg = tiny_config(**kw)
    with torch.device("meta"):
        model = GPT(cfg, init=False)
    assert parameter_count(cfg) == sum(p.numel() for p in model.parameters())


def test_kv_cache_figure_matches_the_model_s_own_cache():
    cfg = tiny_config()
    model = GPT(cfg, init=False)
    state = model.new_state(3, max_len=20)
    held = sum(t.numel() * t.element_size() for layer in state.layers for t in (layer.k, layer.v))
    need = decoding_need(cfg, batch=3, positions=20, dtype_bytes=4)
    assert need.parts["KV cache for 3 x 20 positions"] == held


def test_training_need_is_a_lower_bound_of_what_a_step_keeps():
    """Weights + grads + AdamW moments are exactly 16 bytes a parameter; the activation figure is at
    most what autograd really saves for backward (measured with saved-tensor hooks, fp32 on CPU)."""
    cfg = tiny_config(n_embd=64, n_head=4, vocab_size=256, block_size=64)
    need = training_need(cfg, batch_size=8, block_size=64)
    state, activations = need.parts.values()
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randint(0, 256, (8, 64))
    saved: dict[int, int] = {}
    params = {p.data_ptr() for p in model.parameters()}

    def pack(t):
        if t.data_ptr() not in params:  # the weights themselves are counted in the state part
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _, loss = model(x, x)
    loss.backward()
    opt.step()
    kept = sum(p.numel() * 4 * 2 for p in model.parameters())  # weights and gradients
    kept += sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if t.dim())
    assert state == kept
    assert activations <= sum(saved.values())


def test_refused_with_the_figures(monkeypatch):
    monkeypatch.setattr(gpt2cli.memory, "available_bytes", lambda device: 2**30)
    cfg = tiny_config()
    with pytest.raises(UserError) as err:
        check_training_memory(cfg, batch_size=10**6, block_size=32, device_name="cpu")
    assert str(err.value).startswith("not enough memory: training needs at least 61.0 GiB (")
    assert "cpu has 1.0 GiB free; use a smaller --batch-size" in str(err.value)
    check_training_memory(cfg, batch_size=8, block_size=32, device_name="cpu")  # fits
    monkeypatch.setattr(gpt2cli.memory, "available_bytes", lambda device: None)
    require_fits(training_need(cfg, 10**9, 10**9), torch.device("cpu"), "")  # unknown: not refused


class TwoGPUs:
    """torch.cuda's memory queries for a machine whose GPUs have different free memory.

    A bare torch.device("cuda") is the current GPU, which is GPU 0 until
    distributed.init_from_env calls set_device: the real functions behave so too.
    """

    def __init__(self, free_gib: list[int]):
        self.free = [n * 2**30 for n in free_gib]
        self.asked: list[int] = []

    def index(self, device) -> int:
        index = torch.device(device).index if device is not None else None
        self.asked.append(0 if index is None else index)
        return self.asked[-1]

    def mem_get_info(self, device=None) -> tuple[int, int]:
        return self.free[self.index(device)], 80 * 2**30

    def get_device_properties(self, device=None):
        class Properties:
            total_memory = (40 + 40 * self.index(device)) * 2**30  # GPU 0: 40 GiB, GPU 1: 80 GiB

        return Properties()


@pytest.fixture
def two_gpus(monkeypatch):
    def install(free_gib: list[int]) -> TwoGPUs:
        gpus = TwoGPUs(free_gib)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(free_gib))
        monkeypatch.setattr(torch.cuda, "mem_get_info", gpus.mem_get_info)
        monkeypatch.setattr(torch.cuda, "get_device_properties", gpus.get_device_properties)
        return gpus

    return install


def test_under_torchrun_each_rank_checks_its_own_gpu(two_gpus, monkeypatch):
    """Rank 1 of a torchrun job computes on GPU 1 (distributed.init_from_env), so the
    check before the run must read GPU 1's free memory, not GPU 0's."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    cfg = tiny_config()
    tokens = 4 * 2**30 // (cfg.n_layer * 16 * cfg.n_embd * 2)  # ~4 GiB of activations
    # GPU 0 busy with another job, GPU 1 free: rank 1 fits.
    gpus = two_gpus([1, 40])
    check_training_memory(cfg, batch_size=tokens // 32, block_size=32, device_name="cuda")
    assert gpus.asked == [1]
    # GPU 0 free, GPU 1 busy: rank 1 is refused, with GPU 1's figure.
    two_gpus([40, 1])
    with pytest.raises(UserError, match=r"cuda:1 has 1\.0 GiB free"):
        check_training_memory(cfg, batch_size=tokens // 32, block_size=32, device_name="cuda")
    assert total_device_memory(torch.device("cuda")) == 80 * 2**30  # --loss auto's budget: GPU 1's size
    assert total_device_memory(torch.device("cuda", 0)) == 40 * 2**30  # a GPU named by index is that one
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(UserError, match="LOCAL_RANK 2: this machine has 2 CUDA devices"):
        check_training_memory(cfg, batch_size=1, block_size=32, device_name="cuda")


def test_single_process_checks_the_current_gpu(two_gpus, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")  # without a job, LOCAL_RANK picks nothing
    gpus = two_gpus([40, 1])
    check_training_memory(tiny_config(), batch_size=8, block_size=32, device_name="cuda")
    assert gpus.asked == [0]


def test_decoding_counts_the_cache_the_decode_path_allocates(monkeypatch):
    """The plain path's cache grows to prompt + new tokens; the static step (auto on CUDA)
    holds the whole context whatever --max-new-tokens is; linear attention keeps a fixed state."""
    from gpt2cli.memory import decoding_positions

    cfg = tiny_config(block_size=64)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert decoding_positions(cfg, cpu, "auto", prompt_tokens=5, new_tokens=20) == 25
    assert decoding_positions(cfg, cpu, "plain", prompt_tokens=50, new_tokens=20) == 64
    assert decoding_positions(cfg, cuda, "plain", prompt_tokens=5, new_tokens=20) == 25
    assert decoding_positions(cfg, cuda, "auto", prompt_tokens=5, new_tokens=20) == 64
    assert decoding_positions(cfg, cpu, "static", prompt_tokens=5, new_tokens=20) == 64

    # The static decoder's buffers, as allocated, match the figure for the whole context.
    from gpt2cli.generation import SamplingConfig, generate
    from gpt2cli.model.attention.standard import StandardAttention

    model = GPT(cfg).eval()
    sizes = []
    real_new_state = StandardAttention.new_state

    def spy(self, batch, max_len, *a, **kw):
        cache = real_new_state(self, batch, max_len, *a, **kw)
        sizes.append(sum(t.numel() * t.element_size() for t in (cache.k, cache.v)))
        return cache

    monkeypatch.setattr(StandardAttention, "new_state", spy)
    list(generate(model, [[1, 2, 3, 4, 5]] * 3, SamplingConfig(max_new_tokens=20, seed=0), decode="static"))
    need = decoding_need(cfg, batch=3, positions=decoding_positions(cfg, cpu, "static", 5, 20), dtype_bytes=4)
    assert sum(sizes) == need.parts["KV cache for 3 x 64 positions"]  # one static cache per layer

    lin = tiny_config(block_size=64, attention="linear")
    state = GPT(lin, init=False).new_state(3, max_len=64)
    held = sum(layer.nbytes() for layer in state.layers)
    assert decoding_need(lin, batch=3, positions=64, dtype_bytes=4).parts["recurrent state for 3 samples"] == held


def test_only_fsdp_divides_the_weights_and_optimizer_state_over_the_ranks(monkeypatch):
    """Under DDP every rank holds the whole model, its gradients and AdamW moments; FSDP shards them."""
    cfg = tiny_config(n_embd=64, n_head=4, vocab_size=256, block_size=32)
    state = 16 * parameter_count(cfg)
    activations = training_need(cfg, 1, 32).parts["activations for 1 x 32 tokens"]
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setattr(gpt2cli.memory, "available_bytes", lambda device: state // 2 + activations)
    with pytest.raises(UserError, match="weights, gradients and AdamW state"):
        check_training_memory(cfg, batch_size=1, block_size=32, device_name="cpu")  # DDP: a full copy
    check_training_memory(cfg, batch_size=1, block_size=32, device_name="cpu", sharded=True)  # an eighth each
