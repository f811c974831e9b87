"""`gpt2 eval`: one checkpoint, one data dir -> every failure-mode figure with a verdict.

Areas, each with a verdict line:
- loss: val and train cross-entropy on the same number of tokens, the gap.
- repetition: samples from the starts of val documents (or the user's
  prompts), scored against the real continuations of those documents.
- entropy: the entropy-collapse curve of the samples, beside the model's
  entropy when it reads the real continuations (same temperature and
  repetition penalty, so the two are comparable).
- memorization: verbatim overlap of samples (and of the real text, as the
  baseline) with the training n-gram index; greedy extraction of train vs
  val windows.

`run_eval` returns one JSON-able dict (its schema: eval_schema.json beside
this file); the CLI renders it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from gpt2cli.analysis.entropy import (
    curve_summary,
    entropy_curve,
    entropy_evidence,
    entropy_from_logits,
    entropy_verdict,
)
from gpt2cli.analysis.loss_eval import (
    DEFAULT_GAP_MARGIN,
    document_losses,
    gap_evidence,
    loss_verdict,
)
from gpt2cli.analysis.memorization import (
    extraction_rate,
    memorization_evidence,
    memorization_verdict,
    overlap_counts,
    overlap_report,
    sample_windows,
)
from gpt2cli.analysis.ngram_index import CACHE_DIR_NAME, INDEX_NS, build_cached_index, cache_key
from gpt2cli.analysis.text_metrics import (
    longest_loop,
    repetition_evidence,
    repetition_metrics,
    repetition_verdict,
    seq_rep_n,
)
from gpt2cli.atomic import write_text_atomic
from gpt2cli.errors import UserError

FORMAT = "gpt2cli-eval/1"
SCHEMA_NAME = "eval_schema.json"

# progress(stage, done, total): the library reports, the CLI draws bars.
Progress = Callable[[str, int, int], None]


class EvalOptions(BaseModel):
    """Everything `gpt2 eval` can be told; defaults are the command's defaults."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    eval_tokens: PositiveInt = 65536
    batch_size: PositiveInt = 8
    gap_margin: float = Field(DEFAULT_GAP_MARGIN, ge=0.0)
    num_samples: PositiveInt = 32
    sample_prompt_tokens: PositiveInt = 32  # tokens of each val document used as a prompt
    prompts: list[str] | None = None  # the user's prompts (--prompts FILE), cycled
    max_new_tokens: PositiveInt = 256
    temperature: float = Field(1.0, ge=0.0)
    top_k: PositiveInt | None = None
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    extract_windows: PositiveInt = 64
    prompt_tokens: PositiveInt = 32
    suffix_tokens: PositiveInt = 32
    seed: int = 1337


def load_schema() -> dict:
    """The JSON schema of `run_eval`'s result (shipped as package data)."""
    text = (resources.files("gpt2cli.analysis") / SCHEMA_NAME).read_text(encoding="utf-8")
    return json.loads(text)


def json_safe(value):
    """`value` with non-finite floats (a diverged model's loss) as None: JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def eval_json(result: dict) -> str:
    return json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n"


def write_eval_json(result: dict, path: str | Path) -> Path:
    """The result as indented JSON, written atomically."""
    path = Path(path)
    write_text_atomic(path, eval_json(result))
    return path


def run_dir_of(ckpt: str | Path) -> Path | None:
    """The run dir a checkpoint sits in (it has metrics.jsonl beside it), else None."""
    parent = Path(ckpt).resolve().parent
    return parent if (parent / "metrics.jsonl").is_file() else None


# -- pieces ---------------------------------------------------------------------


def _documents(tokens: np.ndarray, eot_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the documents in a token stream with EOT between documents."""
    eots = np.flatnonzero(np.asarray(tokens) == eot_id)
    starts = np.concatenate(([0], eots + 1))
    ends = np.concatenate((eots, [len(tokens)]))
    keep = ends > starts
    return starts[keep], ends[keep]


def pick_documents(tokens: np.ndarray, eot_id: int, count: int, min_len: int, seed: int) -> list[np.ndarray]:
    """Up to `count` distinct documents longer than `min_len` tokens, in seeded random order."""
    starts, ends = _documents(tokens, eot_id)
    ok = np.flatnonzero(ends - starts > min_len)
    if len(ok) == 0:
        raise UserError(
            f"no validation document is longer than {min_len} tokens, so none can give a prompt "
            "and a continuation; use --prompts FILE"
        )
    chosen = np.random.default_rng(seed).permutation(ok)[:count]
    return [np.asarray(tokens[starts[d] : ends[d]]) for d in chosen]


# Real-text windows behind the repetition verdict's reference rates: every val
# document's continuation, up to this many (seeded pick), so the reference
# rate is known better than from the prompts' own documents alone.
MAX_REFERENCE_WINDOWS = 2000


def reference_windows(tokens: np.ndarray, eot_id: int, prompt_tokens: int, length: int, seed: int) -> list[list[int]]:
    """What follows the first `prompt_tokens` tokens of each val document, cut to `length` tokens."""
    starts, ends = _documents(tokens, eot_id)
    ok = np.flatnonzero(ends - starts > prompt_tokens)
    if len(ok) > MAX_REFERENCE_WINDOWS:
        ok = np.sort(np.random.default_rng(seed).choice(ok, MAX_REFERENCE_WINDOWS, replace=False))
    return [np.asarray(tokens[starts[d] + prompt_tokens : min(ends[d], starts[d] + prompt_tokens + length)]).tolist()
            for d in ok]


def _strip_eot(tokens: list[int], eot_id: int) -> list[int]:
    return tokens[:-1] if tokens and tokens[-1] == eot_id else tokens


def sample(model, prompts: list[list[int]], cfg, progress: Progress | None = None):
    """Decode `prompts` with the shared token iterator; (tokens, entropies, stop reasons) per prompt."""
    from gpt2cli.generation import generate

    n = len(prompts)
    tokens: list[list[int]] = [[] for _ in range(n)]
    entropies: list[list[float]] = [[] for _ in range(n)]
    reasons: list[str] = ["length"] * n
    for t, step in enumerate(generate(model, prompts, cfg)):
        for i in range(n):
            if step.tokens[i] >= 0:
                tokens[i].append(step.tokens[i])
                entropies[i].append(step.entropies[i])
            if step.stop_reason[i] is not None:
                reasons[i] = step.stop_reason[i]
        if progress:
            progress("sampling", t + 1, cfg.max_new_tokens)
    return tokens, entropies, reasons


def reading_entropies(
    model, prompt: list[int], continuation: list[int], temperature: float, repetition_penalty: float
) -> list[float]:
    """Entropy of the model's next-token distribution at each token of `continuation`, read teacher-forced.

    The same distribution the sampler reports on (after repetition penalty
    and temperature, before top-k/top-p; see gpt2cli.sampling), with the
    same sliding context window as generation: position t sees at most the
    last block_size tokens.
    """
    import torch

    from gpt2cli.sampling import processed_logits

    if not continuation:
        return []
    device = next(model.parameters()).device
    block = model.config.block_size
    seq = torch.tensor(prompt + continuation, dtype=torch.long, device=device)
    P, L = len(prompt), len(continuation)
    # Row j predicts continuation[j] from seq[: P + j].
    ends = list(range(P, P + L))
    logits = []
    with torch.inference_mode():
        first = [e for e in ends if e <= block]
        if first:
            h = model(seq[: first[-1]].unsqueeze(0))[0]
            logits.append(h[[e - 1 for e in first]])
        late = [e for e in ends if e > block]
        for i in range(0, len(late), 16):
            windows = torch.stack([seq[e - block : e] for e in late[i : i + 16]])
            logits.append(model(windows, last_only=True)[:, -1])
        x = torch.cat(logits).float()
        present = None
        if repetition_penalty != 1.0:
            V = model.config.vocab_size
            onehot = torch.zeros(P + L, V, dtype=torch.bool, device=device)
            onehot[torch.arange(P + L), seq] = True
            seen = onehot.int().cummax(dim=0).values.bool()
            # At the step that predicts continuation[j], the text so far is seq[: P + j].
            # Generation penalises every token of the text so far, window or not.
            present = seen[[e - 1 for e in ends]]
        x = processed_logits(x, temperature, repetition_penalty, present)
        return entropy_from_logits(x).tolist()


def _greedy(model, prompts: list[list[int]], n: int) -> list[list[int]]:
    from gpt2cli.generation import SamplingConfig, complete

    cfg = SamplingConfig(max_new_tokens=n, temperature=0.0, seed=0)
    return [c.tokens for c in complete(model, prompts, cfg)]


def _decoder(tokenizer_name: str):
    """Token ids -> text with the GPT-2 tokenizer; ids shown as numbers for other tokenizers."""
    from gpt2cli.tokenizer import TOKENIZER_NAME, get_tokenizer

    if tokenizer_name == TOKENIZER_NAME:
        enc = get_tokenizer()
        return lambda ids: enc.decode([int(t) for t in ids])
    return lambda ids: " ".join(f"<{int(t)}>" for t in ids)


def _add_loop_text(rep: dict, decode) -> None:
    loop = rep["longest_loop"]
    if loop is not None:
        loop["text"] = decode(loop["unit_tokens"])


# -- the pipeline, one function per area -------------------------------------------------


def _note(progress: Progress | None, stage: str):
    """A progress callback for one stage, or None."""
    return (lambda done, total: progress(stage, done, total)) if progress else None


def loss_area(
    model, train: np.ndarray, val: np.ndarray, opts: EvalOptions, progress=None, eot_id: int = 50256
) -> dict:
    """Val and train loss on the same number of tokens, the gap's interval over documents, the verdict."""
    n_loss = min(opts.eval_tokens, len(train) - 1, len(val) - 1)
    if n_loss < 1:
        raise UserError("a split has fewer than 2 tokens; nothing to evaluate")
    per_doc = {
        split: document_losses(
            model, tokens, n_loss, eot_id, opts.batch_size, opts.seed, progress=_note(progress, f"{split} loss")
        )
        for split, tokens in (("val", val), ("train", train))
    }
    means = {split: float(s.sum() / c.sum()) for split, (s, c) in per_doc.items()}
    evidence = gap_evidence(per_doc["val"], per_doc["train"], seed=opts.seed)
    return loss_verdict(means["val"], means["train"], n_loss, opts.gap_margin, evidence)


def _prompts(opts: EvalOptions, docs: list[np.ndarray], tokenizer_name: str) -> list[list[int]]:
    if opts.prompts:
        from gpt2cli.tokenizer import TOKENIZER_NAME, get_tokenizer

        if tokenizer_name != TOKENIZER_NAME:
            raise UserError(
                f"--prompts: the checkpoint uses tokenizer {tokenizer_name!r}; "
                f"prompt text can only be encoded with {TOKENIZER_NAME!r}"
            )
        enc = get_tokenizer()
        return [enc.encode_ordinary(opts.prompts[i % len(opts.prompts)]) for i in range(opts.num_samples)]
    # Fewer documents than samples: prompts cycle (the reference keeps each document once).
    P = opts.sample_prompt_tokens
    return [docs[i % len(docs)][:P].tolist() for i in range(opts.num_samples)]


def generation_areas(model, val: np.ndarray, eot: int, opts: EvalOptions, tokenizer_name: str, decode, progress=None):
    """Samples from val-document prompts; repetition and entropy against the real continuations.

    Returns (repetition, entropy, samples, references, per-sample records).
    """
    from gpt2cli.generation import SamplingConfig

    cfg = SamplingConfig(
        max_new_tokens=opts.max_new_tokens,
        temperature=opts.temperature,
        top_k=opts.top_k,
        top_p=opts.top_p,
        repetition_penalty=opts.repetition_penalty,
        seed=opts.seed,
    )
    P = opts.sample_prompt_tokens
    docs = pick_documents(val, eot, opts.num_samples, P, opts.seed)
    prompts = _prompts(opts, docs, tokenizer_name)
    # The real text: what followed each prompt in its document, cut to the samples' length.
    references = [d[P : P + opts.max_new_tokens].tolist() for d in docs]
    drawn, gen_entropies, reasons = sample(model, prompts, cfg, progress)
    generated = [_strip_eot(t, eot) for t in drawn]

    rep_gen, rep_ref = repetition_metrics(generated), repetition_metrics(references)
    _add_loop_text(rep_gen, decode)
    _add_loop_text(rep_ref, decode)
    windows = reference_windows(val, eot, P, opts.max_new_tokens, opts.seed)
    rep_evidence = repetition_evidence(generated, windows, seed=opts.seed)
    rep_verdict, rep_line = repetition_verdict(rep_evidence)
    repetition = {
        "samples": rep_gen,
        "reference": rep_ref,
        "reference_documents": len(docs),
        "evidence": rep_evidence,
        "verdict": rep_verdict,
        "line": rep_line,
    }

    ref_entropies = []
    for i, (d, ref) in enumerate(zip(docs, references, strict=True)):
        ref_entropies.append(reading_entropies(model, d[:P].tolist(), ref, opts.temperature, opts.repetition_penalty))
        if progress:
            progress("reading real text", i + 1, len(docs))
    gen_curve, ref_curve = entropy_curve(gen_entropies), entropy_curve(ref_entropies)
    ent_gen, ent_ref = curve_summary(gen_curve), curve_summary(ref_curve)
    ent_evidence = entropy_evidence(gen_entropies, ref_entropies, seed=opts.seed)
    ent_verdict, ent_line = entropy_verdict(ent_gen, ent_ref, ent_evidence)
    entropy = {
        "samples": {**ent_gen, "curve": gen_curve},
        "reference": {**ent_ref, "curve": ref_curve},
        "evidence": ent_evidence,
        "verdict": ent_verdict,
        "line": ent_line,
    }

    records = []
    for i, toks in enumerate(generated):
        loop = longest_loop(toks)
        records.append(
            {
                "prompt": decode(prompts[i]),
                "text": decode(toks),
                "tokens": len(toks),
                "stop_reason": reasons[i],
                "seq_rep_4": seq_rep_n(toks, 4),
                "loop": None if loop is None else {
                    "start": loop.start, "period": loop.period, "repeats": loop.repeats,
                    "length": loop.length, "text": decode(loop.unit(toks)),
                },
                "mean_entropy": float(np.mean(gen_entropies[i])) if gen_entropies[i] else None,
            }
        )
    return repetition, entropy, generated, references, records


def memorization_area(
    model, data_dir: Path, meta, train, val, generated, references, opts: EvalOptions, progress=None
) -> dict:
    """Overlap of samples and real text with the training n-gram index; extraction of train vs val."""
    key = cache_key([s.sha256 for s in meta.split_shards("train")], INDEX_NS)
    index, index_info = build_cached_index(
        train, data_dir / CACHE_DIR_NAME, key, INDEX_NS,
        progress=(lambda stage, d, t: progress(f"n-gram index: {stage}", d, t)) if progress else None,
    )
    index_info.update(ns=list(index.ns), n_tokens=index.n_tokens)
    overlap_gen = overlap_report(index, generated)
    overlap_ref = overlap_report(index, references)
    P, S = opts.prompt_tokens, opts.suffix_tokens
    extraction = {"prompt_tokens": P, "suffix_tokens": S}
    for i, (split, tokens) in enumerate((("train", train), ("val", val))):
        starts = sample_windows(tokens, opts.extract_windows, P + S, opts.seed, meta.eot_id)
        extraction[split] = extraction_rate(tokens, starts, P, S, lambda p, n: _greedy(model, p, n))
        if progress:
            progress("extraction (train, val)", i + 1, 2)
    top = max(index.ns)
    evidence = memorization_evidence(
        extraction["train"], extraction["val"],
        overlap_counts(index, generated, top), overlap_counts(index, references, top), top, seed=opts.seed,
    )
    verdict, line = memorization_verdict(evidence, overlap_gen)
    return {
        "index": index_info,
        "samples": overlap_gen,
        "reference": overlap_ref,
        "extraction": extraction,
        "evidence": evidence,
        "verdict": verdict,
        "line": line,
    }


def _meta_int(meta: dict[str, str], key: str) -> int:
    try:
        return int(meta.get(key, "0"))
    except ValueError:
        return 0


def run_eval(
    ckpt: str | Path,
    data_dir: str | Path,
    options: EvalOptions | None = None,
    device: str = "auto",
    dtype: str = "auto",
    progress: Progress | None = None,
) -> dict:
    """Evaluate checkpoint `ckpt` on the tokenized data in `data_dir`; returns the result dict."""
    import torch

    from gpt2cli.checkpoint import load_checkpoint_with_meta
    from gpt2cli.data.meta import check_compatible, read_meta
    from gpt2cli.data.reader import read_tokens
    from gpt2cli.device import resolve_device
    from gpt2cli.generation import decoding_dtype
    from gpt2cli.threads import refit_cpu_threads

    opts = options or EvalOptions()
    data_dir = Path(data_dir)
    t_all = time.perf_counter()
    dev = resolve_device(device)
    weights_dtype = decoding_dtype(dev, dtype)
    from gpt2cli.memory import check_decoding_memory

    check_decoding_memory(ckpt, dev, weights_dtype, opts.num_samples, opts.max_new_tokens,
                          prompt_tokens=opts.sample_prompt_tokens)
    model, ck_meta = load_checkpoint_with_meta(ckpt, dev)
    model.to(weights_dtype).eval()
    cfg = model.config
    tokenizer_name = ck_meta.get("tokenizer", "gpt2")
    meta = read_meta(data_dir)
    check_compatible(meta, cfg.vocab_size, tokenizer_name, str(data_dir))
    if opts.prompt_tokens + opts.suffix_tokens > cfg.block_size:
        raise UserError(
            f"--prompt-tokens {opts.prompt_tokens} + --suffix-tokens {opts.suffix_tokens} exceed the "
            f"model's context of {cfg.block_size} tokens"
        )
    train = read_tokens(data_dir, "train")
    val = read_tokens(data_dir, "val")
    decode = _decoder(tokenizer_name)

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    loss = loss_area(model, train, val, opts, progress, meta.eot_id)
    timings["loss"] = time.perf_counter() - t0
    refit_cpu_threads()  # between the areas: another process may have started or ended (threads.py)
    t0 = time.perf_counter()
    repetition, entropy, generated, references, records = generation_areas(
        model, val, meta.eot_id, opts, tokenizer_name, decode, progress
    )
    timings["generation"] = time.perf_counter() - t0
    refit_cpu_threads()
    t0 = time.perf_counter()
    memorization = memorization_area(model, data_dir, meta, train, val, generated, references, opts, progress)
    timings["memorization"] = time.perf_counter() - t0
    for record, overlap in zip(records, memorization["samples"]["longest"]["per_sample"], strict=True):
        record["longest_overlap"] = overlap
    timings["total"] = time.perf_counter() - t_all

    return {
        "format": FORMAT,
        "checkpoint": {
            "path": str(ckpt),
            "step": _meta_int(ck_meta, "step"),
            "tokens_seen": _meta_int(ck_meta, "tokens_seen"),
            "tokenizer": tokenizer_name,
            "config": json.loads(cfg.model_dump_json()),
        },
        "data": {"dir": str(data_dir), "train_tokens": int(len(train)), "val_tokens": int(len(val))},
        "settings": {
            **opts.model_dump(),
            "device": str(dev),
            "dtype": str(weights_dtype).removeprefix("torch."),
            "torch": torch.__version__,
        },
        "loss": loss,
        "repetition": repetition,
        "entropy": entropy,
        "memorization": memorization,
        "verdicts": [loss["line"], repetition["line"], entropy["line"], memorization["line"]],
        "samples": records,
        "seconds": timings,
    }
