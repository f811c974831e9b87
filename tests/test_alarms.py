"""The loss–generation mismatch alarm: fires on loss down + repetition up, quiet otherwise."""

from __future__ import annotations

import pytest

from gpt2cli.analysis.alarms import mismatch_alarm


def evals(val_losses, seq_reps, loop_shares=None):
    loop_shares = loop_shares or [0.0] * len(val_losses)
    return [
        {"step": 100 * (i + 1), "val_loss": v, "seq_rep_4": r, "loop_share": s}
        for i, (v, r, s) in enumerate(zip(val_losses, seq_reps, loop_shares, strict=True))
    ]


def test_fires_when_loss_falls_and_seq_rep_rises():
    history = evals([3.0, 2.8, 2.6, 2.4], [0.02, 0.05, 0.12, 0.30])
    msg = mismatch_alarm(history, k=3)
    assert msg is not None
    assert msg.startswith("loss–generation mismatch")
    assert "2.800 → 2.400" in msg and "seq-rep-4 rose 0.050 → 0.300" in msg
    assert "steps 200–400" in msg


def test_fires_on_loop_share_alone():
    history = evals([3.0, 2.9, 2.8], [0.05, 0.05, 0.05], [0.0, 0.25, 0.5])
    msg = mismatch_alarm(history, k=3)
    assert msg is not None and "loop share rose 0% → 50%" in msg


def test_quiet_on_healthy_run():
    # loss falls and the samples get less repetitive: what training should look like
    assert mismatch_alarm(evals([3.0, 2.8, 2.6, 2.4], [0.30, 0.20, 0.10, 0.05]), k=3) is None
    # repetition rises but so does val loss: overfitting, not a mismatch
    assert mismatch_alarm(evals([2.4, 2.6, 2.8], [0.05, 0.10, 0.20]), k=3) is None
    # a rise within the tolerance is noise
    assert mismatch_alarm(evals([3.0, 2.9, 2.8], [0.050, 0.055, 0.060]), k=3) is None


def test_only_the_last_k_evals_count():
    # the bad stretch is old; the last three evals are healthy
    history = evals([3.0, 2.5, 2.4, 2.3, 2.2], [0.02, 0.40, 0.40, 0.30, 0.20])
    assert mismatch_alarm(history, k=3) is None
    assert mismatch_alarm(history, k=5) is not None


def test_needs_k_usable_records():
    assert mismatch_alarm([], k=3) is None
    assert mismatch_alarm(evals([3.0, 2.0], [0.0, 0.5]), k=3) is None
    # training-step records without val_loss are skipped, not counted
    history = evals([3.0, 2.0], [0.0, 0.5])
    history.insert(1, {"step": 150, "loss": 2.5})
    history.insert(1, {"step": 120, "val_loss": float("nan")})
    assert mismatch_alarm(history, k=2) is not None
    # records without generation figures cannot be worse
    assert mismatch_alarm([{"val_loss": 3.0}, {"val_loss": 2.0}], k=2) is None
    with pytest.raises(ValueError):
        mismatch_alarm(history, k=1)
