"""The loss–generation mismatch alarm: fires on loss down + repetition up beyond chance, quiet otherwise."""

from __future__ import annotations

import pytest

from gpt2cli.analysis.alarms import MIN_SAMPLES, mismatch_alarm, mismatch_check


def evals(val_losses, seq_reps, loop_shares=None, n=32, sd=0.05):
    loop_shares = loop_shares or [0.0] * len(val_losses)
    return [
        {"step": 100 * (i + 1), "val_loss": v, "seq_rep_4": r, "loop_share": s,
         "n_samples": n, "loop_count": round(s * n), "seq_rep_4_sd": sd}
        for i, (v, r, s) in enumerate(zip(val_losses, seq_reps, loop_shares, strict=True))
    ]


def test_fires_when_loss_falls_and_seq_rep_rises():
    history = evals([3.0, 2.8, 2.6, 2.4], [0.02, 0.05, 0.12, 0.30])
    msg = mismatch_alarm(history, k=3)
    assert msg is not None
    assert msg.startswith("loss–generation mismatch")
    assert "2.800 → 2.400" in msg and "seq-rep-4 rose 0.050 → 0.300" in msg
    assert "steps 200–400" in msg and "from 32 samples per eval" in msg
    # the rise's interval: 0.25 +- 1.96 * sqrt(2 * 0.05^2 / 32) = 0.25 +- 0.0245
    assert "(95% interval of the rise [+0.226, +0.274])" in msg


def test_fires_on_loop_share_alone():
    history = evals([3.0, 2.9, 2.8], [0.05, 0.05, 0.05], [0.0, 0.25, 0.5])
    msg = mismatch_alarm(history, k=3)
    assert msg is not None and "loop share rose 0% → 50%" in msg


def test_one_looping_sample_of_three_is_not_enough_evidence():
    # issue 20's false alarm: "loop share rose 0% → 33%" from three fixed-prompt samples
    history = evals([3.0, 2.9, 2.8], [0.0, 0.0, 0.0], [0.0, 0.0, 1 / 3], n=3)
    assert mismatch_alarm(history, k=3) is None
    check = mismatch_check(history, k=3)
    assert check["status"] == "not enough evidence"
    assert check["line"].startswith("mismatch alarm: not enough evidence")
    assert f"from 3 samples per eval; it decides with {MIN_SAMPLES} or more" in check["line"]
    # with enough samples, one more looping sample of 32 is still chance (Newcombe's interval reaches 0)
    history = evals([3.0, 2.9, 2.8], [0.0, 0.0, 0.0], [0.0, 0.0, 1 / 32])
    check = mismatch_check(history, k=3)
    assert check["status"] == "not enough evidence" and "reaches 0%" in check["line"]
    # a seq-rep-4 rise past the tolerance but inside the noise of widely spread samples
    history = evals([3.0, 2.9, 2.8], [0.05, 0.05, 0.09], sd=0.2)
    assert mismatch_check(history, k=3)["status"] == "not enough evidence"


def test_records_without_counts_cannot_fire():
    history = [{"step": s, "val_loss": v, "seq_rep_4": r, "loop_share": 0.0}
               for s, v, r in ((1, 3.0, 0.0), (2, 2.9, 0.2), (3, 2.8, 0.5))]
    assert mismatch_alarm(history) is None
    assert mismatch_check(history)["status"] == "not enough evidence"


def test_quiet_on_healthy_run():
    # loss falls and the samples get less repetitive: what training should look like
    assert mismatch_check(evals([3.0, 2.8, 2.6, 2.4], [0.30, 0.20, 0.10, 0.05]), k=3)["status"] == "ok"
    # repetition rises but so does val loss: overfitting, not a mismatch
    assert mismatch_alarm(evals([2.4, 2.6, 2.8], [0.05, 0.10, 0.20]), k=3) is None
    # a rise within the tolerance is noise
    assert mismatch_check(evals([3.0, 2.9, 2.8], [0.050, 0.055, 0.060]), k=3)["status"] == "ok"


def test_only_the_last_k_evals_count():
    # the bad stretch is old; the last three evals are healthy
    history = evals([3.0, 2.5, 2.4, 2.3, 2.2], [0.02, 0.40, 0.40, 0.30, 0.20])
    assert mismatch_alarm(history, k=3) is None
    assert mismatch_alarm(history, k=5) is not None


def test_needs_k_usable_records():
    assert mismatch_alarm([], k=3) is None
    assert mismatch_check([], k=3)["status"] == "waiting"
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
