"""`gpt2 generate`: sample text from a checkpoint, streamed as it is produced."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from gpt2cli.cli.common import err_console, note, out_console
from gpt2cli.cli.pipes import stdout_closed
from gpt2cli.errors import UserError, shown_path

HELP = """Continue PROMPT with text sampled from a checkpoint, streamed as it is produced.

Decoding uses a KV cache: one prefill of the prompt, then one position per
token. The model sees at most block_size tokens: once the text outgrows the
context the window slides, and every further token re-prefills the last
block_size-1 tokens (plus itself), which is slower. A prompt longer than the
context keeps its last block_size tokens (noted on stderr).

Order of the controls: repetition penalty, temperature, top-k, top-p. Sampling
stops at <|endoftext|>, at a --stop string (not printed), or after
--max-new-tokens. An empty PROMPT starts from <|endoftext|>.

Output: the prompt and its continuation on stdout (only complete UTF-8
characters are printed). With --num-samples N the samples decode as one batch;
sample 1 streams live and the others print when all are done. --json prints
one JSON object at the end: per sample the text, token ids, and per token its
log-probability and the entropy (nats) of the model's distribution after the
repetition penalty and temperature, before top-k/top-p (temperature 0 counts
as 1 there). Sample i's randomness depends only on (--seed, i).

Speed: --dtype bf16 halves the bytes a step reads; at batch 1 on a CPU with
AVX512-BF16 it decoded 1.2x (tiny) to 1.7x (small) faster than fp32. auto
means fp32 on CPU and MPS (exact), bf16 on CUDA. --decode auto replays each
token's step from a CUDA graph on CUDA (a KV cache the size of the context,
so every step has the same shapes) and decodes plainly elsewhere; every
choice gives the same tokens. stderr ends with the time to the first token
and the tokens/s after it (--json: the "timing" object).

Examples:

  gpt2 generate "Once upon a time" --top-k 40

  gpt2 generate "The little dog" --temperature 0 --max-new-tokens 50

  gpt2 generate "" --num-samples 4 --top-p 0.9 --seed 1 --json > samples.json
"""

DTYPES = ("auto", "fp32", "bf16")
DECODES = ("auto", "plain", "static", "graph")


def generate_cmd(
    prompt: str = typer.Argument("", help="Text to continue; empty starts from <|endoftext|>."),
    ckpt: Path = typer.Option(None, "--ckpt", help="Checkpoint (default: the newest under ./runs)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Tokens to generate at most."),
    temperature: float = typer.Option(1.0, "--temperature", help="Softmax temperature; 0 = greedy."),
    top_k: int = typer.Option(None, "--top-k", help="Sample among the K most likely tokens only."),
    top_p: float = typer.Option(None, "--top-p", help="Nucleus sampling: smallest set with mass >= P, in (0, 1]."),
    repetition_penalty: float = typer.Option(
        1.0, "--repetition-penalty", help="CTRL-style penalty on tokens already in the text (> 1 discourages)."
    ),
    num_samples: int = typer.Option(1, "--num-samples", help="Samples to decode (as one batch)."),
    seed: int = typer.Option(None, "--seed", help="Random seed (default: a random one, noted on stderr)."),
    stop: list[str] = typer.Option(None, "--stop", help="Stop when this text appears (repeatable; a newline in bash: $'\\n')."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object at the end, nothing else on stdout."),
    dtype: str = typer.Option("auto", "--dtype", help="Weights dtype: auto (fp32; bf16 on CUDA), fp32 or bf16."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or mps."),
    decode: str = typer.Option(
        "auto", "--decode", help="Decode step: auto (graph on CUDA, else plain), plain, static or graph (CUDA)."
    ),
) -> None:
    # Cheap checks first: a typo should not wait for torch to import.
    from gpt2cli.generation import SamplingConfig

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: expected {', '.join(DTYPES)}")
    if decode not in DECODES:
        raise UserError(f"--decode {decode}: expected {', '.join(DECODES)}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError("PROMPT: not valid UTF-8") from None
    cfg = SamplingConfig(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        stop=list(stop or []),
        seed=seed,
    )
    if ckpt is None:
        from gpt2cli.defaults import newest_checkpoint

        ckpt, message = newest_checkpoint()
        note(message)

    from gpt2cli.checkpoint import load_checkpoint_with_meta
    from gpt2cli.device import resolve_device
    from gpt2cli.generation import decoding_dtype, generate, prepare_for_decoding
    from gpt2cli.static_decode import check_graph_device, resolve_decode
    from gpt2cli.tokenizer import EOT_ID, EOT_TEXT, TOKENIZER_NAME, VOCAB_SIZE, get_tokenizer

    dev = resolve_device(device)
    check_graph_device(decode, dev)
    weights_dtype = decoding_dtype(dev, dtype)
    if device == "auto" or dtype == "auto":
        note(f"device: {dev.type}, weights: {str(weights_dtype).removeprefix('torch.')}")
    from gpt2cli.memory import check_decoding_memory

    enc = get_tokenizer()
    # A literal <|endoftext|> in the prompt is the document separator, as in training data.
    prompt_tokens = enc.encode(prompt, allowed_special={EOT_TEXT})
    check_decoding_memory(ckpt, dev, weights_dtype, num_samples, cfg.max_new_tokens, decode, len(prompt_tokens) or 1)
    model, meta = load_checkpoint_with_meta(ckpt, dev)
    if meta.get("tokenizer", TOKENIZER_NAME) != TOKENIZER_NAME:
        raise UserError(f"{ckpt}: made with tokenizer {meta['tokenizer']!r}, not {TOKENIZER_NAME!r}")
    model = prepare_for_decoding(model.to(weights_dtype))
    decode = resolve_decode(decode, model)

    vocab = model.config.vocab_size
    outside = [t for t in prompt_tokens or [EOT_ID] if t >= vocab]
    if outside:
        # A model trained on another vocabulary than the GPT-2 tokenizer's.
        raise UserError(
            f"{ckpt}: PROMPT token {outside[0]} is outside this model's vocabulary ({vocab} tokens); "
            f"the GPT-2 tokenizer has {VOCAB_SIZE}"
        )
    if not prompt_tokens:
        note("prompt: empty, starting from <|endoftext|>")
        prompt_tokens = [EOT_ID]
    block = model.config.block_size
    if len(prompt_tokens) > block:
        note(f"prompt: {len(prompt_tokens)} tokens, more than the context of {block}; the model sees the last {block}")

    if cfg.seed is None and cfg.temperature != 0:
        import secrets

        cfg.seed = secrets.randbits(31)
        note(f"seed: {cfg.seed} (random; pass --seed {cfg.seed} to repeat)")
    steps = generate(model, [prompt_tokens] * num_samples, cfg, decode)
    try:
        if json_out:
            _render_json(steps, cfg, ckpt, prompt, prompt_tokens, num_samples, dev, weights_dtype, decode)
        else:
            _render_stream(steps, prompt, num_samples)
    except KeyboardInterrupt:
        steps.close()
        err_console.print("\n[dim]interrupted[/dim]")
        raise typer.Exit(130) from None


class Timing:
    """Wall-clock times of a generation: to the first step's tokens, and the rate after them.

    Started before the first step is asked for, so the first token's time
    holds the setup (a CUDA graph's capture) and the prompt's prefill.
    """

    def __init__(self) -> None:
        import time

        self.clock = time.perf_counter
        self.start = self.clock()
        self.first_s: float | None = None
        self.first_tokens = 0
        self.tokens = 0
        self.total_s = 0.0

    def step(self, tokens: int) -> None:
        now = self.clock() - self.start
        if self.first_s is None:
            self.first_s, self.first_tokens = now, tokens
        self.tokens += tokens
        self.total_s = now

    def finish(self) -> None:
        self.total_s = self.clock() - self.start

    def after_first(self) -> float | None:
        """Tokens/s after the first step; None when there was no second step."""
        if self.first_s is None or self.tokens == self.first_tokens or self.total_s <= self.first_s:
            return None
        return (self.tokens - self.first_tokens) / (self.total_s - self.first_s)

    def record(self) -> dict:
        rate = self.after_first()
        return {
            "new_tokens": self.tokens,
            "total_s": round(self.total_s, 6),
            "time_to_first_token_s": None if self.first_s is None else round(self.first_s, 6),
            "tokens_per_s": round(self.tokens / self.total_s, 3) if self.total_s > 0 else None,
            "tokens_per_s_after_first": None if rate is None else round(rate, 3),
        }

    def line(self) -> str:
        """`N tokens in X s (first token after Y s, then R tokens/s)`."""
        head = f"{self.tokens} tokens in {self.total_s:.2f} s"
        if self.first_s is None:
            return head
        rate = self.after_first()
        then = f", then {rate:.1f} tokens/s" if rate is not None else ""
        return f"{head} (first token after {self.first_s:.2f} s{then})"


def _render_stream(steps, prompt: str, num_samples: int) -> None:
    """Sample 1 streams to stdout as its characters complete; the rest print at the end."""
    texts: list[list[str]] = [[] for _ in range(num_samples)]
    reasons = [""] * num_samples
    if num_samples > 1:
        out_console.rule(f"sample 1 of {num_samples}", style="dim")
    sys.stdout.write(prompt)
    sys.stdout.flush()
    timing = Timing()
    for step in steps:
        if stdout_closed():
            # The reader went away (`| head`): stop generating, quietly, as Unix tools do (cli/pipes.py).
            steps.close()
            return
        timing.step(sum(1 for x in step.tokens if x >= 0))
        for i in range(num_samples):
            if step.stop_reason[i]:
                reasons[i] = step.stop_reason[i]
            if step.text[i]:
                texts[i].append(step.text[i])
        if step.text[0]:
            sys.stdout.write(step.text[0])
            sys.stdout.flush()
    timing.finish()
    sys.stdout.write("\n")
    for i in range(1, num_samples):
        out_console.rule(f"sample {i + 1} of {num_samples}", style="dim")
        sys.stdout.write(prompt + "".join(texts[i]) + "\n")
    sys.stdout.flush()
    ends = ", ".join(sorted(set(reasons)))
    err_console.print(f"[dim]{timing.line()}; stopped at: {ends}[/dim]", soft_wrap=True)


def _render_json(steps, cfg, ckpt, prompt, prompt_tokens, num_samples, dev, weights_dtype, decode) -> None:
    import json

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    samples = [
        {"text": "", "tokens": [], "logprobs": [], "entropies": [], "stop_reason": None} for _ in range(num_samples)
    ]
    columns = (TextColumn("generating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("generate", total=cfg.max_new_tokens)
        timing = Timing()
        for step in steps:
            timing.step(sum(1 for x in step.tokens if x >= 0))
            for i, s in enumerate(samples):
                if step.tokens[i] < 0:
                    continue
                s["tokens"].append(step.tokens[i])
                s["logprobs"].append(step.logprobs[i])
                s["entropies"].append(step.entropies[i])
                s["text"] += step.text[i]
                if step.stop_reason[i]:
                    s["stop_reason"] = step.stop_reason[i]
            progress.advance(task)
        timing.finish()
    err_console.print(f"[dim]{timing.line()}[/dim]", soft_wrap=True)
    record = {
        "checkpoint": shown_path(ckpt),
        "prompt": prompt,
        "prompt_tokens": prompt_tokens,
        "settings": {
            **cfg.model_dump(),
            "num_samples": num_samples,
            "device": dev.type,
            "dtype": str(weights_dtype).removeprefix("torch."),
            "decode": decode,
        },
        "samples": samples,
        "timing": timing.record(),
    }
    from gpt2cli.analysis.evaluate import json_safe

    # JSON has no NaN or Infinity: a non-finite figure is null, never an invalid document.
    print(json.dumps(json_safe(record), ensure_ascii=False, allow_nan=False))


def register(app: typer.Typer) -> None:
    app.command("generate", help=HELP)(generate_cmd)
