"""Autoregressive decoding: the one token iterator the CLI, `eval` and training samples share.

`generate(model, prompts, cfg)` yields one `Step` per position for the whole
batch; `complete` runs it to the end. How it decodes:

- KV cache: one prefill of each prompt, then one position per step through
  the model's `DecodeState` (preallocated by the attention kind).
- The context window slides: the model always sees the last `block_size`
  tokens of the text. Once the text outgrows the context, every new token
  re-prefills the last block_size-1 tokens plus itself (positions are
  absolute, so a shifted window cannot reuse its cache); slower, but exactly
  what recomputing the cropped forward each step gives (nanoGPT's
  `idx[:, -block_size:]`).
- Batching: prompts of equal length decode as one batch. Prompts of different
  lengths go in separate groups (one forward each per step), because
  left-padding would shift the learned position embeddings; so every sample
  equals decoding its prompt alone.
- Randomness: sample i draws from its own stream of uniforms, fixed by
  (seed, i) (`sample_uniforms`), so a sample does not depend on the batch
  it shares. Batch-size-dependent float rounding in the matmuls is the only
  difference, far below the gaps between tokens' probabilities in practice.
- Finished samples ride along in their batch (their draws are ignored and
  reported as -1) until the whole group is done; then the group stops.
- Text: each sample's tokens are turned into text incrementally
  (`TextStream`): only complete UTF-8 characters come out, and text that
  could be the start of a stop string is held back until it is known not to be.
- Decode step (`decode=`): the plain one here, or a step with fixed shapes
  over a context-sized cache, replayed from a CUDA graph on CUDA
  (static_decode.py); the same tokens either way.
- Speed: a step is the model's forward, the sampler's tensor ops and one
  host transfer; at batch 1 on a CPU the weights' memory layout and the
  matmul kernel decide the rest (`prepare_for_decoding`, `DecodingForward`).
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import math
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from gpt2cli.bounds import check
from gpt2cli.device import cuda_has_native_bf16
from gpt2cli.errors import UserError
from gpt2cli.sampling import Sampler, check_sampling_values
from gpt2cli.tokenizer import EOT_ID, get_tokenizer

STOP_EOT, STOP_STRING, STOP_LENGTH = "eot", "stop", "length"


class SamplingConfig(BaseModel):
    """How to decode. Bad values raise UserError naming the command-line flag."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 = greedy
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0  # CTRL-style, 1 = none
    stop: list[str] = []  # stop strings, besides <|endoftext|>
    seed: int | None = None  # None: a fresh random seed per call

    def __init__(self, **data):
        try:
            super().__init__(**data)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise UserError(f"sampling setting {where}: {first['msg']}") from None

    @model_validator(mode="after")
    def _check(self) -> SamplingConfig:
        # UserError is not a ValueError, so pydantic lets it through as it is.
        check_sampling_values(self.temperature, self.top_k, self.top_p, self.repetition_penalty)
        check("--max-new-tokens", self.max_new_tokens, "generate")
        if any(s == "" for s in self.stop):
            raise UserError("--stop: a stop string must not be empty")
        return self


@dataclass
class Step:
    """One decoding step for the whole batch (lists in batch order).

    tokens: the token each sample drew; -1 for samples that finished earlier.
    logprobs / entropies: log-probability of the drawn token and entropy (nats)
        of the model's distribution after repetition penalty and temperature,
        before top-k/top-p truncation (temperature 0 counts as 1); NaN for
        samples that finished earlier. See `gpt2cli.sampling`.
    finished: the sample is done (at this step or before).
    text: the text this step completed for each sample ('' often: a token may
        end mid-character, or text may be held back as a possible stop string).
    stop_reason: "eot" | "stop" | "length" at the step a sample finishes, else None.
    """

    tokens: list[int]
    logprobs: list[float]
    entropies: list[float]
    finished: list[bool]
    text: list[str] = field(default_factory=list)
    stop_reason: list[str | None] = field(default_factory=list)


@dataclass
class Completion:
    """One finished sample.

    tokens: every drawn token, including a final <|endoftext|> or the token
        that completed a stop string; logprobs/entropies align with tokens.
    text: the generated text only (no prompt), ending before <|endoftext|>
        or before the stop string.
    stop_reason: "eot" | "stop" | "length".
    """

    prompt: list[int]
    tokens: list[int]
    logprobs: list[float]
    entropies: list[float]
    text: str
    stop_reason: str


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample `index`'s random stream: a hash, so nearby seeds share no samples."""
    digest = hashlib.blake2b(f"gpt2cli-sample:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


UNIFORM_BLOCK = 256


class UniformStream:
    """Sample i's random numbers: blocks of uniforms in [0, 1) from its own generator.

    Drawn as float32 (steps of 2^-24) and widened to float64, so that
    u * total < total always holds in float64, which keeps the inverse-CDF
    draw on a token with mass. Blocks keep memory flat however long the
    generation.
    """

    def __init__(self, seed: int, index: int):
        self.gen = torch.Generator().manual_seed(sample_seed(seed, index))

    def block(self) -> torch.Tensor:
        return torch.rand(UNIFORM_BLOCK, generator=self.gen, dtype=torch.float32).double()


def sample_uniforms(seed: int, index: int, n: int) -> torch.Tensor:
    """The first n uniforms sample `index` draws its tokens with (float64, CPU)."""
    stream = UniformStream(seed, index)
    return torch.cat([stream.block() for _ in range(-(-n // UNIFORM_BLOCK))])[:n]


class TextStream:
    """Decoded text of one sample, released as it becomes certain.

    Tokens are byte strings that may split a UTF-8 character; an incremental
    decoder (errors="replace", like tiktoken's decode) emits only complete
    characters, so the pieces concatenate to exactly the one-shot decode and
    never show a U+FFFD the finished text would not have. With stop strings,
    a tail that could begin one is held back until it cannot.
    """

    def __init__(self, token_bytes: Callable[[int], bytes], stops: list[str]):
        self.token_bytes = token_bytes
        self.stops = stops
        self.longest = max((len(s) for s in stops), default=0)
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # decoded so far (generated part only)
        self.released = 0  # characters of `text` already handed out

    def push(self, token: int) -> tuple[str, bool]:
        """Add a token; returns (newly certain text, hit a stop string)."""
        piece = self.decoder.decode(self.token_bytes(token))
        if not self.stops:
            self.text += piece
            self.released = len(self.text)
            return piece, False
        search_from = max(0, len(self.text) - self.longest + 1)
        self.text += piece
        hits = [i for i in (self.text.find(s, search_from) for s in self.stops) if i >= 0]
        if hits:
            end = min(hits)
            out = self.text[self.released : end]
            self.text = self.text[:end]
            self.released = end
            return out, True
        end = len(self.text) - self._held_tail()
        out = self.text[self.released : end]
        self.released = max(self.released, end)
        return out, False

    def _held_tail(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        for n in range(min(self.longest - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def finish(self) -> str:
        """The sample ended (EOT or length): release everything, incomplete bytes as U+FFFD."""
        self.text += self.decoder.decode(b"", final=True)
        out = self.text[self.released :]
        self.released = len(self.text)
        return out


def token_bytes_function() -> Callable[[int], bytes]:
    """GPT-2 token id -> its bytes; ids the tokenizer lacks (a padded vocabulary) decode to b''."""
    enc = get_tokenizer()
    n_vocab = enc.n_vocab

    def token_bytes(token: int) -> bytes:
        return enc.decode_single_token_bytes(token) if 0 <= token < n_vocab else b""

    return token_bytes


def decoding_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """Weights dtype for decoding: fp32 unless bf16 is asked for (auto: bf16 on CUDA with native bf16)."""
    if name == "fp32":
        return torch.float32
    if name == "bf16":
        return torch.bfloat16
    if name != "auto":
        raise UserError(f"--dtype {name}: expected auto, fp32 or bf16")
    if device.type == "cuda" and cuda_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def check_prompts(prompts: list[list[int]], vocab_size: int) -> list[list[int]]:
    """Validated copies; an empty prompt becomes [<|endoftext|>], GPT-2's document start."""
    if not prompts:
        raise UserError("generate: no prompts given")
    out = []
    for i, p in enumerate(prompts):
        p = [int(t) for t in p]
        if not p:
            if EOT_ID >= vocab_size:
                raise UserError(
                    f"prompt {i}: empty, and this model's vocabulary ({vocab_size} tokens) "
                    "has no <|endoftext|> to start from"
                )
            p = [EOT_ID]
        bad = [t for t in p if not 0 <= t < vocab_size]
        if bad:
            raise UserError(f"prompt {i}: token {bad[0]} is outside this model's vocabulary ({vocab_size} tokens)")
        out.append(p)
    return out


def prepare_for_decoding(model):
    """Store the model's matrices the way CPU matrix-vector products read fastest (in place).

    CPU fp32 only (a no-op otherwise): every nn.Linear weight, the tied
    embedding/head included, becomes column-major. Values, shapes and
    parameter names are unchanged; `F.linear(x, W)` then multiplies by W.T,
    which is now contiguous, and MKL streams that layout 1.5-3x faster than
    nn.Linear's row-major one when x is a single row (tiny's 256 x 50304
    head: 1.9-2.6 ms vs 6.1 ms; small decodes ~1.3x faster overall). Not for
    bf16: ATen's bf16 gemv is ~10x slower on column-major weights. Meant for
    models loaded to generate (the CLI calls it): training still works, with
    kernels tuned for one row at a time. Returns the model.
    """
    w = model.lm_head.weight
    if w.device.type != "cpu" or w.dtype != torch.float32:
        return model
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.t().is_contiguous():
                module.weight.data = module.weight.data.t().contiguous().t()
    return model


class DecodingForward:
    """One decoding forward: new tokens (b, T) through the cache -> next-token logits (b, vocab).

    At batch 1 a step is a chain of matrix-vector products, and which CPU
    kernel runs them decides the speed (figures: tiny, one thread, on a
    2-core EPYC with AVX512-BF16):

    - fp32, a model not given to `prepare_for_decoding`, generations of at
      least `TRANSPOSE_MIN_STEPS` steps: the tied head (the biggest matrix by
      far) multiplies by a column-major copy made for this call (see
      `prepare_for_decoding` for why). The copy costs about as much as 10-50
      tokens, and one more embedding's worth of memory while the generation
      lasts.
    - bf16, one token of one sample: oneDNN is switched off for the step, so
      ATen's own bf16 gemv runs (the head: 1.8 ms vs 3.0-3.3 ms; a whole
      step ~1.3x faster). Only then: with more rows ATen's bf16 path is many
      times slower than oneDNN's, so prefills and batches keep oneDNN.
    - Otherwise (CUDA, MPS, prepared models, short runs): the model's own forward.
    """

    TRANSPOSE_MIN_STEPS = 64

    def __init__(self, model, steps: int):
        self.model = model
        self.vocab_size = model.config.vocab_size
        w = model.lm_head.weight
        on_cpu = w.device.type == "cpu"
        self.weight_t = None
        prepared = w.t().is_contiguous()
        if on_cpu and w.dtype == torch.float32 and not prepared and steps >= self.TRANSPOSE_MIN_STEPS:
            self.weight_t = w.detach().t().contiguous()
        self.aten_bf16_gemv = on_cpu and w.dtype == torch.bfloat16

    def __call__(self, idx: torch.Tensor, state) -> torch.Tensor:
        with self.kernels(idx.numel()):
            return self.head(self.model.hidden(idx, state)[:, -1])

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states (b, C) -> logits (b, vocab), with the kernel chosen above."""
        if self.weight_t is not None:
            return (h @ self.weight_t)[:, : self.vocab_size]
        return self.model.logits_from_hidden(h)

    @contextlib.contextmanager
    def kernels(self, tokens: int):
        """The kernels for a forward of `tokens` new tokens (`__call__`'s and the static step's)."""
        if not (self.aten_bf16_gemv and tokens == 1):
            yield
            return
        saved = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            yield
        finally:
            torch.backends.mkldnn.enabled = saved


class _Group:
    """Samples whose prompts have the same length: one batch, one cache, one window."""

    def __init__(
        self,
        rows: list[int],
        prompts: list[list[int]],
        cfg: SamplingConfig,
        seed: int,
        model,
        sampler,
        forward: DecodingForward,
        decode: str = "plain",
    ):
        self.device = next(model.parameters()).device
        self.rows = rows
        self.history = [list(p) for p in prompts]  # prompt + drawn tokens, for re-prefills
        self.next_input = None  # (b, 1): the tokens drawn last step, fed next
        self.state = None
        self.present = None
        if cfg.repetition_penalty != 1.0:
            self.present = torch.zeros(len(rows), model.config.vocab_size, dtype=torch.bool, device=self.device)
            self.present.scatter_(1, torch.tensor(prompts, device=self.device), True)
        self.streams = [UniformStream(seed, i) for i in rows] if sampler.needs_uniforms else None
        self.uniforms = None
        # Positions a cache must hold: the window, or less for a short text
        # (the last drawn token is never fed back).
        self.max_len = min(model.config.block_size, len(prompts[0]) + cfg.max_new_tokens - 1)
        # A static step pays off only for tokens decoded inside the context.
        self.static = None
        if decode in ("static", "graph") and self.max_len > len(prompts[0]):
            from gpt2cli.static_decode import StaticDecoder

            self.static = StaticDecoder(model, forward, sampler, len(rows), self.present, graph=decode == "graph")

    def step(self, model, forward: DecodingForward, sampler: Sampler, t: int) -> tuple[list[int], list[float], list[float]]:
        """Feed what the cache lacks, draw one token per row; returns [tokens, logprobs, entropies]."""
        block = model.config.block_size
        u = None
        if self.streams is not None:
            if t % UNIFORM_BLOCK == 0:
                self.uniforms = torch.stack([s.block() for s in self.streams], dim=1).to(self.device)
            u = self.uniforms[t % UNIFORM_BLOCK]
        if self.static is not None and self.static.armed:
            if self.static.length < block:
                return self._record(self.static.step(u))
            # The window is full: from here on the plain path re-prefills every token.
            self.static, self.state = None, None
        if self.state is None or self.state.pos >= block:
            # First step, or the window is full: (re-)prefill the last tokens that fit.
            if self.static is not None:
                self.state = self.static.prefill_state()
            else:
                self.state = model.new_state(len(self.rows), max_len=self.max_len)
            idx = torch.tensor([h[-block:] for h in self.history], device=self.device)
        else:
            idx = self.next_input
        logits = forward(idx, self.state)
        token, logprob, entropy = sampler(logits, self.present, u)
        self.next_input = token.unsqueeze(1)
        if self.present is not None:
            self.present.scatter_(1, self.next_input, True)
        if self.static is not None:
            self.static.arm(self.state, self.next_input)
        return self._record(torch.stack((token.float(), logprob, entropy)))

    def _record(self, result: torch.Tensor) -> tuple[list[int], list[float], list[float]]:
        # One host transfer per step; ids < 2^24 are exact in float32.
        drawn, logprobs, entropies = result.tolist()
        drawn = [int(x) for x in drawn]
        for h, x in zip(self.history, drawn, strict=True):
            h.append(x)
        return drawn, logprobs, entropies


def generate(model, prompts: list[list[int]], cfg: SamplingConfig, decode: str = "auto") -> Iterator[Step]:
    """Decode `prompts` (token id lists) as one batch; yields a `Step` per new position.

    Stops when every sample is finished (<|endoftext|>, a stop string, or
    max_new_tokens). The model is put in eval mode for the duration (and
    restored after); each step runs under torch.inference_mode, the caller's
    code between steps does not. decode: "auto" | "plain" | "static" |
    "graph", the decode step (static_decode.py; auto: graph on CUDA, plain
    elsewhere); every mode gives the same tokens.
    """
    from gpt2cli.static_decode import attention_backends, resolve_decode

    decode = resolve_decode(decode, model)
    vocab_size = model.config.vocab_size
    prompts = check_prompts(prompts, vocab_size)
    sampler = Sampler(vocab_size, cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty)
    seed = cfg.seed if cfg.seed is not None else secrets.randbits(63)
    token_bytes = token_bytes_function()

    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    batch = len(prompts)
    streams = [TextStream(token_bytes, cfg.stop) for _ in range(batch)]
    finished = [False] * batch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), attention_backends(device):
            forward = DecodingForward(model, cfg.max_new_tokens)
            groups = [
                _Group(rows, [prompts[i] for i in rows], cfg, seed, model, sampler, forward, decode)
                for rows in by_length.values()
            ]
        for t in range(cfg.max_new_tokens):
            tokens, logprobs, entropies = [-1] * batch, [math.nan] * batch, [math.nan] * batch
            text, reasons = [""] * batch, [None] * batch
            last = t == cfg.max_new_tokens - 1
            for group in groups:
                if all(finished[i] for i in group.rows):
                    continue
                with torch.inference_mode(), attention_backends(device):
                    drawn, lps, ents = group.step(model, forward, sampler, t)
                for j, i in enumerate(group.rows):
                    if finished[i]:
                        continue
                    tok = drawn[j]
                    tokens[i], logprobs[i], entropies[i] = tok, lps[j], ents[j]
                    if tok == EOT_ID:
                        text[i], reasons[i] = streams[i].finish(), STOP_EOT
                    else:
                        text[i], hit = streams[i].push(tok)
                        if hit:
                            reasons[i] = STOP_STRING
                        elif last:
                            text[i] += streams[i].finish()
                            reasons[i] = STOP_LENGTH
                    finished[i] = reasons[i] is not None
            yield Step(tokens, logprobs, entropies, list(finished), text, reasons)
            if all(finished):
                return
    finally:
        model.train(was_training)


def complete(model, prompts: list[list[int]], cfg: SamplingConfig, decode: str = "auto") -> list[Completion]:
    """Run `generate` to the end; one `Completion` per prompt, in order."""
    prompts = check_prompts(prompts, model.config.vocab_size)
    n = len(prompts)
    tokens: list[list[int]] = [[] for _ in range(n)]
    logprobs: list[list[float]] = [[] for _ in range(n)]
    entropies: list[list[float]] = [[] for _ in range(n)]
    texts: list[list[str]] = [[] for _ in range(n)]
    reasons: list[str] = [STOP_LENGTH] * n
    for step in generate(model, prompts, cfg, decode):
        for i in range(n):
            if step.tokens[i] < 0:
                continue
            tokens[i].append(step.tokens[i])
            logprobs[i].append(step.logprobs[i])
            entropies[i].append(step.entropies[i])
            texts[i].append(step.text[i])
            if step.stop_reason[i] is not None:
                reasons[i] = step.stop_reason[i]
    return [
        Completion(prompts[i], tokens[i], logprobs[i], entropies[i], "".join(texts[i]), reasons[i])
        for i in range(n)
    ]
