"""`gpt2 eval CKPT`: loss gap, repetition, entropy collapse and memorization, with verdicts."""

from __future__ import annotations

from pathlib import Path

import typer

from gpt2cli.cli.common import (
    err_console,
    note,
    out_console,
    require_writable_file,
    wrote,
)
from gpt2cli.errors import UserError


def _read_prompts(path: Path) -> list[str]:
    if path.is_dir():
        raise UserError(f"--prompts {path}: is a directory, expected a text file")
    if not path.is_file():
        raise UserError(f"--prompts {path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"--prompts {path}: not UTF-8 text") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"--prompts {path}: no prompts in it (one prompt per line)")
    return prompts


def _options(**values):
    from pydantic import ValidationError

    from gpt2cli.analysis.evaluate import EvalOptions

    try:
        return EvalOptions(**values)
    except ValidationError as err:
        first = err.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-")
        raise UserError(f"{flag} {first.get('input')}: {first['msg']}") from None


def _progress_bar():
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


def _fmt(x, spec: str = ".3f") -> str:
    if x is None:
        return "—"
    return format(x, spec)


def _ci(x, bounds, spec: str = ".3f", percent: bool = False) -> str:
    """`x` with its 95% interval, compact: `0.412 [0.380, 0.455]`, `12.5% [6.1, 23.8]`."""
    import math

    text = _fmt(x, spec)
    if x is None or not bounds or any(b is None or not math.isfinite(b) for b in bounds):
        return text
    if percent:  # the bounds in percent, as many decimals as x, without repeating the sign
        spec = f".{spec[spec.index('.') + 1:-1] or 0}f"
        bounds = [100 * b for b in bounds]
    return f"{text} [{format(bounds[0], spec)}, {format(bounds[1], spec)}]"


def _render(result: dict) -> None:
    from rich.table import Table

    # Each rate or gap with its 95% interval (the same as in the verdict lines and --json), where there is one.
    loss = result["loss"]
    ev = loss.get("evidence") or {}
    t = Table(title=f"loss ({loss['tokens']:,} tokens per split, nats/token; [95% interval])")
    for col in ("", "val", "train", "gap"):
        t.add_column(col, justify="right" if col else "left", no_wrap=bool(col))
    t.add_row(
        "cross-entropy",
        _ci(loss["val_loss"], ev.get("val_interval")),
        _ci(loss["train_loss"], ev.get("train_interval")),
        _ci(loss["gap"], ev.get("gap_interval"), "+.3f"),
    )
    t.add_row("perplexity", _fmt(loss["val_perplexity"], ".2f"), _fmt(loss["train_perplexity"], ".2f"), "")
    out_console.print(t)

    rep = result["repetition"]
    g, r = rep["samples"], rep["reference"]
    rev = rep.get("evidence") or {}
    loop_ev, seq_ev = rev.get("loop") or {}, rev.get("seq_rep_4") or {}
    t = Table(title=f"repetition: {len(result['samples'])} samples vs real text")
    for col in ("", "samples", "real text"):
        t.add_column(col, justify="right" if col else "left", no_wrap=bool(col))
    # The verdicts' reference: every real-text window of val, not only the prompts' continuations.
    n_windows = loop_ev.get("reference_n")
    windows = f"… in {n_windows} real-text window{'s' if n_windows != 1 else ''}" if loop_ev else None
    for key, label in (
        ("distinct_1", "distinct-1"), ("distinct_2", "distinct-2"), ("distinct_3", "distinct-3"),
        ("distinct_4", "distinct-4"), ("seq_rep_4", "seq-rep-4"), ("rep_16", "rep-16"), ("rep_32", "rep-32"),
    ):
        if key != "seq_rep_4":
            t.add_row(label, _fmt(g[key]), _fmt(r[key]))
            continue
        t.add_row(label, _ci(g[key], seq_ev.get("interval")), _fmt(r[key]))
        if windows and seq_ev.get("reference_n"):
            t.add_row(windows, "", _ci(seq_ev["reference_mean"], seq_ev["reference_interval"]))
    t.add_row("samples with a loop", _ci(g["loop_share"], loop_ev.get("interval"), ".0%", True), _fmt(r["loop_share"], ".0%"))
    if windows:
        t.add_row(windows, "", _ci(loop_ev["reference_rate"], loop_ev["reference_interval"], ".0%", True))
    for name, rr in (("samples", g), ("real text", r)):
        loop = rr["longest_loop"]
        if loop:
            t.add_row(
                f"longest loop ({name})",
                f"{loop['period']} tokens x {loop['repeats']}",
                repr(loop["text"])[:60],
            )
    t.add_row("mean length (tokens)", _fmt(g["mean_length"], ".1f"), _fmt(r["mean_length"], ".1f"))
    out_console.print(t)

    ent = result["entropy"]
    t = Table(title="next-token entropy by position (nats)")
    for col in ("", "samples", "model reading real text"):
        t.add_column(col, justify="right" if col else "left", no_wrap=bool(col))
    for key, label in (("first_quarter", "first quarter"), ("last_quarter", "last quarter"), ("mean", "mean")):
        t.add_row(label, _fmt(ent["samples"][key]), _fmt(ent["reference"][key]))
    out_console.print(t)

    mem = result["memorization"]
    mev = mem.get("evidence") or {}
    ov, ex_ev = mev.get("overlap") or {}, mev.get("extraction") or {}
    t = Table(title=f"memorization (index of {mem['index']['n_tokens']:,} training tokens)")
    for col in ("", "samples", "real val text"):
        t.add_column(col, justify="right" if col else "left", no_wrap=bool(col))
    for n, fig in mem["samples"]["per_n"].items():
        mine = str(ov.get("n")) == str(n)  # the verdict's n-gram length carries the intervals
        t.add_row(
            f"{n}-grams found in train",
            _ci(fig["share"], ov.get("interval") if mine else None, ".1%", True),
            _ci(mem["reference"]["per_n"][n]["share"], ov.get("reference_interval") if mine else None, ".1%", True),
        )
    t.add_row(
        "longest verbatim overlap (max / mean tokens)",
        f"{mem['samples']['longest']['max']} / {mem['samples']['longest']['mean']:.1f}",
        f"{mem['reference']['longest']['max']} / {mem['reference']['longest']['mean']:.1f}",
    )
    ex = mem["extraction"]
    t.add_row(
        f"extracted ({ex['prompt_tokens']}-token prompt, {ex['suffix_tokens']} greedy): train",
        f"{_ci(ex['train']['share'], ex_ev.get('interval'), '.1%', True)} of {ex['train']['windows']}", "",
    )
    t.add_row(
        "… val (control)",
        f"{_ci(ex['val']['share'], ex_ev.get('reference_interval'), '.1%', True)} of {ex['val']['windows']}", "",
    )
    out_console.print(t)

    for line in result["verdicts"]:
        style = "green" if ": ok" in line else "bold red" if any(w in line for w in ("HIGH", "OVERFITTING", "COLLAPSE")) else "yellow"
        # The style is applied whole: a line's own brackets (an interval shown as `[n/a]`) are text, not markup.
        out_console.print(line, style=style, markup=False, soft_wrap=True)


def eval_cmd(
    ckpt: Path = typer.Argument(None, help="Checkpoint to evaluate (default: the newest under ./runs)."),
    data: Path = typer.Option(None, "--data", help="Tokenized data dir (default: the only/newest under ./data)."),
    json_path: str = typer.Option(None, "--json", help="Write every figure as JSON to PATH ('-': stdout, nothing else)."),
    eval_tokens: int = typer.Option(65536, "--eval-tokens", help="Tokens per split for the val/train loss."),
    gap_margin: float = typer.Option(0.1, "--gap-margin", help="Overfitting when val loss exceeds train loss by more (nats)."),
    num_samples: int = typer.Option(32, "--num-samples", help="Samples for the repetition and entropy figures."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="New tokens per sample."),
    prompts: Path = typer.Option(None, "--prompts", help="File with one prompt per line (default: starts of val documents)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (0 = greedy)."),
    top_k: int = typer.Option(None, "--top-k", help="Sample from the k most likely tokens."),
    top_p: float = typer.Option(None, "--top-p", help="Nucleus sampling: the smallest set with this much mass."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty", help="CTRL repetition penalty (1 = none)."),
    extract_windows: int = typer.Option(64, "--extract-windows", help="Train (and val) windows for the extraction test."),
    prompt_tokens: int = typer.Option(32, "--prompt-tokens", help="Extraction: prompt length P."),
    suffix_tokens: int = typer.Option(32, "--suffix-tokens", help="Extraction: greedy suffix length S that must match."),
    seed: int = typer.Option(1337, "--seed", help="Seed for windows, documents and sampling."),
    device: str = typer.Option("auto", "--device", help="auto|cpu|cuda|mps"),
    dtype: str = typer.Option("auto", "--dtype", help="auto|fp32|bf16 (weights dtype)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --json file."),
) -> None:
    """Loss gap (overfitting), repetition loops, entropy collapse and memorization of a checkpoint, each with a verdict.

    Samples are drawn from the starts of val documents and compared with the real
    continuations of those documents; the training shards' 8/16/32-gram index is
    built once and cached in DATA_DIR/.ngram_index. When CKPT sits in a run dir
    (metrics.jsonl beside it), the JSON is also saved as RUN_DIR/eval.json.

    Examples:

      gpt2 eval runs/tiny/ckpt.safetensors --data data/stories

      gpt2 eval runs/tiny/ckpt.safetensors --top-k 40 --num-samples 64 --json eval.json
    """
    from gpt2cli.defaults import default_data_dir, newest_checkpoint

    # Every number's range is checked as it is parsed (gpt2cli.bounds).
    if json_path not in (None, "-"):
        require_writable_file("--json", json_path)
    if ckpt is None:
        try:
            ckpt, msg = newest_checkpoint()
        except UserError as err:  # the shared message names generate's --ckpt; here it is CKPT
            raise UserError(str(err).replace("--ckpt", "CKPT")) from None
        note(msg)
    if data is None:
        data, msg = default_data_dir()
        note(msg)
    from gpt2cli.analysis.evaluate import run_dir_of
    from gpt2cli.outputs import Output, check_outputs, files_in

    run_dir = run_dir_of(ckpt)  # where eval.json is also kept, below
    check_outputs(
        [Output("--json", Path(json_path))] if json_path not in (None, "", "-") else [],
        [ckpt, *([prompts] if prompts else []), *files_in(data)],
        force=force,
        owned=[Output("--json", run_dir / "eval.json")] if run_dir is not None else [],
    )
    from gpt2cli.sampling import check_sampling_values

    check_sampling_values(temperature, top_k, top_p, repetition_penalty)
    options = _options(
        eval_tokens=eval_tokens, gap_margin=gap_margin, num_samples=num_samples, max_new_tokens=max_new_tokens,
        prompts=_read_prompts(prompts) if prompts is not None else None, temperature=temperature, top_k=top_k,
        top_p=top_p, repetition_penalty=repetition_penalty, extract_windows=extract_windows,
        prompt_tokens=prompt_tokens, suffix_tokens=suffix_tokens, seed=seed,
    )

    from gpt2cli.analysis.evaluate import eval_json, run_eval, write_eval_json

    # The bar starts with the first progress event: bad input found while
    # loading is then one line on stderr, not an empty bar and the line.
    bar = None
    tasks: dict[str, int] = {}

    def progress(stage: str, done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = _progress_bar()
            bar.start()
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done, total=total)

    try:
        result = run_eval(ckpt, data, options, device=device, dtype=dtype, progress=progress)
    finally:
        if bar is not None:
            bar.stop()

    rebuilt = result["memorization"]["index"].get("rebuilt")
    if rebuilt:  # only a cache: say so, and go on
        err_console.print(f"note: n-gram index {rebuilt}", markup=False, soft_wrap=True)
    if json_path == "-":
        print(eval_json(result), end="")
    else:
        _render(result)
        if json_path:
            write_eval_json(result, json_path)
            wrote(json_path)
    already = (
        run_dir is not None
        and json_path not in (None, "", "-")
        and Path(json_path).resolve() == run_dir / "eval.json"
    )
    if run_dir is not None and not already:
        write_eval_json(result, run_dir / "eval.json")
        wrote(run_dir / "eval.json")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
