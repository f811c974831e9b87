"""Device and dtype policy (device.py, generation.decoding_dtype) for GPUs this machine lacks.

torch.cuda is replaced by a stand-in GPU: `native` says whether it does bf16
in hardware (Ampere and later) or only emulates it (Volta, Turing), where
torch.cuda.is_bf16_supported() still answers True unless asked about
emulation.
"""

from __future__ import annotations

import pytest
import torch

from gpt2cli.device import autocast_dtype
from gpt2cli.generation import decoding_dtype

CUDA = torch.device("cuda")


@pytest.fixture
def gpu(monkeypatch):
    def install(native_bf16: bool) -> None:
        def is_bf16_supported(including_emulation: bool = True) -> bool:
            return native_bf16 or including_emulation

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)

    return install


def test_gpu_with_emulated_bf16_trains_in_fp16_and_decodes_in_fp32(gpu):
    gpu(native_bf16=False)  # a V100 or T4
    assert autocast_dtype(CUDA) == torch.float16
    assert decoding_dtype(CUDA) == torch.float32
    assert autocast_dtype(CUDA, "bf16") == torch.bfloat16  # asked for: given, slow or not
    assert decoding_dtype(CUDA, "bf16") == torch.bfloat16


def test_gpu_with_native_bf16_uses_it(gpu):
    gpu(native_bf16=True)  # an A100 or H100
    assert autocast_dtype(CUDA) == torch.bfloat16
    assert decoding_dtype(CUDA) == torch.bfloat16
    assert autocast_dtype(CUDA, "fp16") == torch.float16
    assert autocast_dtype(CUDA, "fp32") is None
