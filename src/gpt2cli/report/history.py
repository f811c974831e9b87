"""What the report derives from a run's records: generation quality per eval, and the loops
in each training-time sample.

Generation figures come from the eval records of metrics.jsonl when the trainer
logged them (seq_rep_4, loop_share, mean_entropy and a `mismatch` warning, from
gpt2cli.analysis.text_metrics.generation_metrics / alarms.mismatch_alarm). A run
whose evals lack them (an older run, or a trainer that did not log them) still
has its samples in samples.jsonl: the same functions are applied to those,
re-tokenized, and the alarm is recomputed over the eval history so far.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from gpt2cli.analysis.alarms import mismatch_alarm
from gpt2cli.analysis.text_metrics import Loop, generation_metrics, longest_loop, seq_rep_n
from gpt2cli.report.load import RunData

GENERATION_KEYS = ("seq_rep_4", "loop_share", "mean_entropy")
TOKEN_KEYS = ("tokens", "token_ids")  # sample token ids, if the trainer stores them


@dataclass
class GenerationPoint:
    step: int
    val_loss: float | None
    seq_rep_4: float | None
    loop_share: float | None
    mean_entropy: float | None
    mismatch: str | None  # the alarm's warning when it fired at this eval


@dataclass
class GenerationHistory:
    points: list[GenerationPoint]
    source: str  # "logged" (metrics.jsonl), "samples" (derived from samples.jsonl) or "none"


@dataclass
class SampleView:
    """One training-time sample with its figures and every back-to-back loop in it."""

    step: int
    prompt: str
    text: str
    stop_reason: str | None
    mean_entropy: float | None
    token_ids: list[int]
    seq_rep_4: float | None
    loops: list[Loop] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)  # character spans of `loops` in `text`
    tokens_from: str = "re-tokenized text"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def sample_tokens(record: dict[str, Any]) -> tuple[list[int], str]:
    """The sample's token ids: stored ones if the record has them, else its text re-tokenized.

    Re-tokenizing gives back the sampled ids except where the model drew a
    non-canonical split of a word; loops, which repeat whole spans, survive it.
    """
    for key in TOKEN_KEYS:
        ids = record.get(key)
        if isinstance(ids, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            return ids, "stored token ids"
    from gpt2cli.tokenizer import get_tokenizer

    return get_tokenizer().encode_ordinary(record["text"]), "re-tokenized text"


def all_loops(tokens: list[int], offset: int = 0) -> list[Loop]:
    """Every back-to-back loop, longest first: the longest loop, then (recursively) the
    longest ones in the stretches before and after it. Non-overlapping by construction."""
    loop = longest_loop(tokens)
    if loop is None:
        return []
    end = loop.start + loop.length
    found = [Loop(loop.start + offset, loop.period, loop.repeats)]
    found += all_loops(tokens[: loop.start], offset)
    found += all_loops(tokens[end:], offset + end)
    return sorted(found, key=lambda x: (-x.length, x.start))


def char_span(text: str, tokens: list[int], start: int, end: int) -> tuple[int, int]:
    """Characters of `text` covered by tokens[start:end].

    Byte-level BPE tokens can end mid-character: the byte offsets are widened to
    whole UTF-8 characters before converting, so the highlight never splits one.
    """
    from gpt2cli.tokenizer import get_tokenizer

    enc = get_tokenizer()
    raw = text.encode("utf-8")
    b0 = min(len(enc.decode_bytes(tokens[:start])), len(raw))
    b1 = min(b0 + len(enc.decode_bytes(tokens[start:end])), len(raw))
    while 0 < b0 < len(raw) and raw[b0] & 0xC0 == 0x80:  # a UTF-8 continuation byte
        b0 -= 1
    while b1 < len(raw) and raw[b1] & 0xC0 == 0x80:
        b1 += 1
    return len(raw[:b0].decode("utf-8", errors="replace")), len(raw[:b1].decode("utf-8", errors="replace"))


def sample_views(run: RunData) -> list[SampleView]:
    views = []
    for record in run.samples:
        tokens, how = sample_tokens(record)
        loops = all_loops(tokens)
        views.append(
            SampleView(
                step=record["step"],
                prompt=str(record.get("prompt", "")),
                text=record["text"],
                stop_reason=record.get("stop_reason"),
                mean_entropy=_number(record.get("mean_entropy")),
                token_ids=tokens,
                seq_rep_4=seq_rep_n(tokens, 4),
                loops=loops,
                spans=[char_span(record["text"], tokens, lp.start, lp.start + lp.length) for lp in loops],
                tokens_from=how,
            )
        )
    return views


def _derived(eval_record: dict[str, Any], samples: list[SampleView]) -> dict:
    """Generation figures of one eval from its samples (the same functions the trainer uses)."""
    figures = generation_metrics([s.token_ids for s in samples])
    entropies = [s.mean_entropy for s in samples if s.mean_entropy is not None]
    entropy = _number(eval_record.get("sample_entropy"))
    if entropy is None and entropies:
        entropy = sum(entropies) / len(entropies)
    return {
        "step": eval_record["step"],
        "val_loss": eval_record.get("val_loss"),
        "seq_rep_4": figures.get("seq_rep_4"),
        "loop_share": figures.get("loop_share"),
        "mean_entropy": entropy,
        # the alarm's evidence: how many samples, how many loop, the spread of seq-rep-4
        "n_samples": figures.get("n_samples"),
        "loop_count": figures.get("loop_count"),
        "seq_rep_4_sd": figures.get("seq_rep_4_sd"),
    }


def generation_history(run: RunData, views: list[SampleView] | None = None) -> GenerationHistory:
    """Generation figures at each eval, logged or derived from the samples (see module doc)."""
    if not run.evals:
        return GenerationHistory([], "none")
    logged = any(any(k in r for k in GENERATION_KEYS) for r in run.evals)
    if logged:
        points = [
            GenerationPoint(
                step=r["step"],
                val_loss=_number(r.get("val_loss")),
                seq_rep_4=_number(r.get("seq_rep_4")),
                loop_share=_number(r.get("loop_share")),
                mean_entropy=_number(r.get("mean_entropy", r.get("sample_entropy"))),
                mismatch=r.get("mismatch") if isinstance(r.get("mismatch"), str) else None,
            )
            for r in run.evals
        ]
        return GenerationHistory(points, "logged")

    views = sample_views(run) if views is None else views
    if not views:
        return GenerationHistory([], "none")
    by_step: dict[int, list[SampleView]] = defaultdict(list)
    for v in views:
        by_step[v.step].append(v)
    history: list[dict] = []
    points = []
    for r in run.evals:
        if r["step"] not in by_step:
            continue  # an eval whose samples were not written (none configured, or cut off)
        figures = _derived(r, by_step[r["step"]])
        history.append(figures)
        # The alarm as the trainer would have raised it at this eval: over the history so far.
        alarm = mismatch_alarm(history)
        points.append(
            GenerationPoint(
                step=r["step"],
                val_loss=_number(r.get("val_loss")),
                seq_rep_4=_number(figures["seq_rep_4"]),
                loop_share=_number(figures["loop_share"]),
                mean_entropy=_number(figures["mean_entropy"]),
                mismatch=alarm,
            )
        )
    return GenerationHistory(points, "samples" if points else "none")
