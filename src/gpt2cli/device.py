"""Device and dtype policy shared by train, generate, eval and inspect."""

from __future__ import annotations

import os

import torch

from gpt2cli.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """auto: cuda, then mps, then cpu. An unavailable explicit device is a user error.

    On the CPU, under the `gpt2` command, this is also where the math threads are
    fitted to the cores other processes leave free (threads.py).
    """
    device = _device(name)
    if device.type == "cpu":
        from gpt2cli.threads import settle_cpu_threads

        settle_cpu_threads()
    return device


def _device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps: no MPS device is available")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"--device {name}: expected auto, cpu, cuda or mps")
    return torch.device(name)


def env_int(name: str, default: int) -> int:
    """An integer torchrun sets (WORLD_SIZE, RANK, LOCAL_RANK), `default` when unset."""
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {name}={value!r}: expected an integer (set by torchrun)") from None


def rank_device(device: torch.device) -> torch.device:
    """The device this process computes on: under torchrun (WORLD_SIZE > 1) on CUDA, GPU LOCAL_RANK.

    distributed.init_from_env moves each rank there; the memory checks run
    before it does, when a bare "cuda" still means GPU 0, and must ask about
    the GPU the rank will use. Elsewhere `device` as given.
    """
    if device.type != "cuda" or device.index is not None or env_int("WORLD_SIZE", 1) <= 1:
        return device
    local = env_int("LOCAL_RANK", 0)
    if local >= torch.cuda.device_count():
        raise UserError(
            f"LOCAL_RANK {local}: this machine has {torch.cuda.device_count()} CUDA devices "
            "(pass --nproc_per_node at most that many)"
        )
    return torch.device("cuda", local)


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 matmuls (AVX512-BF16 or AMX), so autocast pays off."""
    try:
        caps = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # older torch
        return False
    if caps in ("AVX512_BF16", "AMX"):
        return True
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def cuda_has_native_bf16() -> bool:
    """True where the current GPU does bf16 math in hardware (Ampere, sm80, and later).

    torch.cuda.is_bf16_supported() on its own also says True on Volta and
    Turing (sm70/75), which only emulate bf16 and run it far slower than fp16.
    """
    return torch.cuda.is_bf16_supported(including_emulation=False)


def autocast_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype | None:
    """The autocast dtype for training/eval, or None for plain fp32.

    auto: bf16 where the device supports it (CPU included when it has bf16
    matmuls); fp16 on CUDA without native bf16 (the caller adds a grad scaler).
    """
    if dtype == "fp32":
        return None
    if dtype == "bf16":
        return torch.bfloat16
    if dtype == "fp16":
        if device.type == "cpu":
            raise UserError("--dtype fp16: not supported on the CPU; use bf16 or fp32")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if cuda_has_native_bf16() else torch.float16
    if device.type == "mps":
        return torch.bfloat16 if hasattr(torch.backends.mps, "is_macos_or_newer") else None
    return torch.bfloat16 if cpu_supports_bf16() else None
