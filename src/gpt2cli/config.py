"""Config is data: preset TOML -> one pydantic model -> the code.

`RunConfig` holds a `ModelConfig` (what the checkpoint needs to rebuild the
network) and a `TrainConfig` (how to train it). Presets live in `presets/*.toml`
and ship inside the wheel; a user's own TOML file works the same way.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from gpt2cli.bounds import MAX_SEED
from gpt2cli.errors import UserError
from gpt2cli.preset_files import builtin_preset_dir, preset_names

ATTENTION_KINDS = ("standard", "linear", "gated")


class ModelConfig(BaseModel):
    """The network's shape. Travels inside every checkpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    n_layer: PositiveInt = 12
    n_head: PositiveInt = 12
    n_embd: PositiveInt = 768
    block_size: PositiveInt = 1024
    vocab_size: PositiveInt = 50257
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: bool = True
    attention: str = "standard"

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(
                f"unknown attention kind {self.attention!r} (choose from {', '.join(ATTENTION_KINDS)})"
            )
        return self

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        # Matmuls run faster on a multiple of 64; the extra rows never leave the model.
        return -(-self.vocab_size // 64) * 64


class TrainConfig(BaseModel):
    """How to train. Saved in the checkpoint's `train` metadata as resolved."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    steps: PositiveInt = 2000
    batch_size: PositiveInt = 16
    block_size: PositiveInt = 256
    grad_accum: PositiveInt = 1
    lr: PositiveFloat = 1e-3
    min_lr: float = Field(1e-4, ge=0.0)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0.0)
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.95, ge=0.0, lt=1.0)
    grad_clip: float = Field(1.0, ge=0.0)
    eval_every: PositiveInt = 200
    eval_batches: PositiveInt = 8
    save_every: PositiveInt = 500
    log_every: PositiveInt = 10
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    seed: int = Field(1337, ge=0, le=MAX_SEED)
    compile: bool = False
    # The training loss (memory.choose_loss): chunked cross-entropy (never the
    # whole logits), full logits (fused by --compile on CUDA), or auto.
    loss: Literal["auto", "chunked", "full"] = "auto"
    activation_checkpointing: bool = False  # recompute each block in backward: memory for compute
    peak_tflops: float = Field(0.0, ge=0.0)  # 0: unknown, MFU not shown
    skip_nonfinite: int = Field(0, ge=0)
    sample_tokens: PositiveInt = 64
    # Samples drawn (as one batch, the prompts cycled) at each eval: the
    # mismatch alarm needs a dozen or more to tell a real rise from chance.
    eval_samples: PositiveInt = 16
    sample_prompts: list[str] = ["Once upon a time", "The little dog", "They wave to each other"]
    # Where the weights started (`--init-from`): a path, or a hub name pinned to its commit.
    init_from: str | None = None


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()


def preset_path(name: str) -> Path:
    """A built-in preset name or a path to a user's TOML file."""
    if name in preset_names():
        return builtin_preset_dir() / f"{name}.toml"
    path = Path(name)
    if path.suffix != ".toml":
        raise UserError(f"--preset {name}: not a preset ({', '.join(preset_names())}) nor a .toml file")
    if path.is_dir():
        raise UserError(f"--preset {name}: is a directory, expected a .toml file")
    if not path.is_file():
        raise UserError(f"--preset {name}: no such file")
    return path


def _format_validation_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    if not where.isprintable():  # a key from a file may hold a newline; the message stays one line
        where = repr(where)
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    msg = msg.removeprefix("Value error, ")
    return f"{source}: {where + ': ' if where else ''}{msg}"


def validate_run_config(data: dict[str, Any], source: str) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(_format_validation_error(source, err)) from None


def model_config_from_dict(data: dict[str, Any], source: str) -> ModelConfig:
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(_format_validation_error(source, err)) from None


def read_preset(name: str) -> dict[str, Any]:
    path = preset_path(name)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text at byte {err.start} (TOML files are UTF-8)") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: not valid TOML ({err})") from None


def _parse_value(text: str) -> Any:
    """`--set` values: TOML/JSON literals where they parse, else plain strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides (the `--set` flag) to a preset dict."""
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or parts[0] not in ("model", "train"):
            raise UserError(f"--set {item}: expected model.KEY=VALUE or train.KEY=VALUE")
        data.setdefault(parts[0], {})[parts[1]] = _parse_value(value.strip())
    return data


def load_run_config(preset: str, overrides: list[str] | None = None) -> RunConfig:
    data = apply_overrides(read_preset(preset), overrides or [])
    return validate_run_config(data, f"preset {preset}")
