"""The learning-rate schedule: linear warm-up, then cosine decay to min_lr (GPT-3 §B)."""

from __future__ import annotations

import math

import pytest

from gpt2cli.config import TrainConfig
from gpt2cli.train.schedule import lr_at


def cfg(**kw) -> TrainConfig:
    base = dict(steps=110, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    base.update(kw)
    return TrainConfig(**base)


def test_warmup_is_linear_and_never_zero():
    c = cfg()
    got = [lr_at(s, c) for s in range(10)]
    want = [1e-3 * (s + 1) / 11 for s in range(10)]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[0] > 0


def test_cosine_from_peak_to_min():
    c = cfg()
    assert lr_at(10, c) == pytest.approx(1e-3)  # first decay step: the peak
    assert lr_at(109, c) == pytest.approx(1e-4)  # last step: the floor
    # Halfway through the 100 decay steps the cosine is at 0: the mean of peak and floor.
    mid = 10 + 99 / 2
    assert 0.5 * (lr_at(math.floor(mid), c) + lr_at(math.ceil(mid), c)) == pytest.approx(5.5e-4, rel=1e-3)
    # Independent formula at an arbitrary step.
    s = 37
    want = 1e-4 + 0.5 * (1 + math.cos(math.pi * (s - 10) / 99)) * (1e-3 - 1e-4)
    assert lr_at(s, c) == pytest.approx(want, rel=1e-12)


def test_decay_is_monotonic_and_bounded():
    c = cfg()
    decay = [lr_at(s, c) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    assert min(decay) >= 1e-4 - 1e-15 and max(decay) <= 1e-3 + 1e-15


def test_no_warmup_and_steps_past_the_end():
    c = cfg(warmup_steps=0, steps=5)
    assert lr_at(0, c) == pytest.approx(1e-3)
    assert lr_at(4, c) == pytest.approx(1e-4)
    assert lr_at(7, c) == pytest.approx(1e-4)


def test_min_lr_above_lr_is_capped():
    c = cfg(min_lr=1.0)
    assert max(lr_at(s, c) for s in range(110)) <= 1e-3
