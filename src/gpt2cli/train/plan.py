"""From a preset, flags and paths to a checked `TrainSetup`.

A fresh run: the preset, then `--set`/flag overrides (one pydantic model
validates the result), the vocabulary from the data's meta.json, and the
model's context raised when `--block-size` asks for more than the preset has.

`--resume`: the config comes from the run's resume state (the model cannot
change; train settings given as flags still override, e.g. a larger
`--steps` to train further).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpt2cli.config import apply_overrides, read_preset, validate_run_config
from gpt2cli.errors import UserError
from gpt2cli.train.loop import TrainSetup
from gpt2cli.train.run_dir import RunDir
from gpt2cli.train.state import read_resume_metadata

# How the command line spells a config key, for messages.
FLAG_FOR_KEY = {
    "train.steps": "--steps",
    "train.batch_size": "--batch-size",
    "train.block_size": "--block-size",
    "train.grad_accum": "--grad-accum",
    "train.lr": "--lr",
    "train.dtype": "--dtype",
    "train.device": "--device",
    "train.eval_every": "--eval-every",
    "train.save_every": "--save-every",
    "train.seed": "--seed",
    "train.compile": "--compile",
    "train.loss": "--loss",
    "train.skip_nonfinite": "--skip-nonfinite",
    "train.peak_tflops": "--peak-tflops",
    "model.attention": "--attention",
    "model.dropout": "--dropout",
    "train.init_from": "--init-from",
}
# What a pretrained start decides about the model; the preset and flags decide the rest.
SOURCE_SHAPE = ("n_layer", "n_head", "n_embd", "vocab_size", "bias", "attention")


def flag_name(key: str) -> str:
    return FLAG_FOR_KEY.get(key, f"--set {key}")


def preset_label(preset: str) -> str:
    """`tiny` -> tiny; `my/cfg.toml` -> cfg (for run directory names)."""
    return Path(preset).stem if preset.endswith(".toml") else preset


def default_run_dir(data_dir: Path, preset: str, attention: str | None) -> Path:
    """runs/<data dir name>-<preset>-<attention>, e.g. runs/stories-tiny-linear."""
    if attention is None:
        attention = str(read_preset(preset).get("model", {}).get("attention", "standard"))
    return Path("runs") / f"{Path(data_dir).resolve().name}-{preset_label(preset)}-{attention}"


def _split(overrides: list[str]) -> dict[str, str]:
    """`section.key=value` strings as {section.key: value} (the last one wins)."""
    out = {}
    for item in overrides:
        key, _, value = item.partition("=")
        out[key.strip()] = value.strip()
    return out


def _read_data_meta(data_dir: Path):
    from gpt2cli.data.meta import read_meta

    if not Path(data_dir).exists():
        raise UserError(f"--data {data_dir}: no such data directory (run `gpt2 tokenize` first)")
    return read_meta(data_dir)


def _check_data(data_dir: Path, vocab_size: int, tokenizer: str) -> None:
    from gpt2cli.data.meta import check_compatible

    check_compatible(_read_data_meta(data_dir), vocab_size, tokenizer, f"--data {data_dir}")


def plan_fresh(
    preset: str, overrides: list[str], data_dir: Path, out_dir: Path, init_from: str | None = None, fsdp: bool = False
) -> TrainSetup:
    from gpt2cli.data.meta import check_compatible
    from gpt2cli.tokenizer import TOKENIZER_NAME

    run_dir = RunDir(out_dir)
    if run_dir.has_checkpoint():
        raise UserError(
            f"--out {out_dir}: already holds a run's checkpoint; pass --resume to continue it, "
            "or choose another --out"
        )
    meta = _read_data_meta(data_dir)
    data = apply_overrides(read_preset(preset), overrides)
    data.setdefault("model", {})
    data.setdefault("train", {})
    notes: list[str] = []
    init_from = init_from or data["train"].get("init_from")
    source = None
    if init_from:
        source = _start_from(str(init_from), data, _split(overrides), notes)
    elif "model.vocab_size" not in _split(overrides):
        data["model"]["vocab_size"] = meta.vocab_size  # the data decides the vocabulary
    run = validate_run_config(data, f"preset {preset}")
    if run.train.block_size > run.model.block_size:
        notes.append(
            f"model.block_size raised from {run.model.block_size} to {run.train.block_size} "
            f"to fit {flag_name('train.block_size')} {run.train.block_size}"
        )
        run = run.model_copy(update={"model": run.model.model_copy(update={"block_size": run.train.block_size})})
    check_compatible(meta, run.model.vocab_size, TOKENIZER_NAME, f"--data {data_dir}")
    _check_memory(run, fsdp)
    run_dir.create()
    return TrainSetup(run=run, data_dir=Path(data_dir), run_dir=run_dir, resume=False, notes=notes, init=source,
                      fsdp=fsdp)  # fmt: skip


def _start_from(text: str, data: dict[str, Any], given: dict[str, str], notes: list[str]):
    """Take the model's shape from the pretrained source `text`; crop its context to the training one."""
    from gpt2cli.weights_source import resolve_source

    source = resolve_source(text)
    src = source.config
    model, train = data["model"], data["train"]
    for key in SOURCE_SHAPE + ("block_size",):
        if f"model.{key}" in given and model.get(key) != getattr(src, key):
            raise UserError(
                f"{flag_name('model.' + key)} {model.get(key)}: the model's shape comes from --init-from {text} "
                f"({key}={getattr(src, key)!r})"
            )
        model[key] = getattr(src, key)
    block = train.get("block_size", src.block_size)
    if isinstance(block, int) and block > src.block_size:
        if "train.block_size" in given:
            raise UserError(
                f"{flag_name('train.block_size')} {block}: larger than the context of {source.label} "
                f"({src.block_size} positions)"
            )
        notes.append(f"training context {src.block_size} (the preset's {block} is more than {source.label} has)")
        train["block_size"] = block = src.block_size
    if isinstance(block, int) and block < src.block_size:
        why = f"{flag_name('train.block_size')} {block}" if "train.block_size" in given else f"the preset's block_size {block}"
        notes.append(
            f"position table cropped from {src.block_size} to {block} rows to fit {why} "
            f"(the model's context is now {block})"
        )
        model["block_size"] = block
    train["init_from"] = source.label
    notes.append(
        f"weights from {source.label}: {src.n_layer} layers, {src.n_head} heads, {src.n_embd} wide, "
        f"dropout {model.get('dropout', 0.0)}"
    )
    return source


def plan_resume(overrides: list[str], data_dir: Path, out_dir: Path, fsdp: bool = False) -> TrainSetup:
    run_dir = RunDir(out_dir)
    if not run_dir.root.is_dir() or not run_dir.has_checkpoint():
        raise UserError(f"--resume: no checkpoint in {out_dir} to resume (train without --resume first)")
    meta = read_resume_metadata(run_dir.resume_state)
    path = run_dir.resume_state
    try:
        model = json.loads(meta["config"])
        train = json.loads(meta["train"])
    except (KeyError, json.JSONDecodeError):
        raise UserError(f"{path}: damaged resume state (no valid config/train metadata)") from None
    if not isinstance(model, dict) or not isinstance(train, dict):
        raise UserError(f"{path}: damaged resume state (config/train are not JSON objects)")
    ckpt_cfg = dict(model)
    data: dict[str, Any] = apply_overrides({"model": dict(model), "train": dict(train)}, overrides)
    for key, value in data["model"].items():
        if value != ckpt_cfg.get(key):
            raise UserError(
                f"{flag_name('model.' + key)} {value}: the checkpoint in {out_dir} has "
                f"{key}={ckpt_cfg.get(key)!r}, and the model cannot change on --resume"
            )
    context = ckpt_cfg.get("block_size")
    if isinstance(context, int) and isinstance(data["train"].get("block_size"), int):
        if data["train"]["block_size"] > context:
            raise UserError(
                f"{flag_name('train.block_size')} {data['train']['block_size']}: larger than the context "
                f"of the checkpoint in {out_dir} ({context} positions)"
            )
    run = validate_run_config(data, f"--resume {out_dir}")
    _check_memory(run, fsdp)
    tokenizer = _resume_tokenizer(run_dir)
    _check_data(data_dir, run.model.vocab_size, tokenizer)
    notes = []
    trained_on = _trained_on(run_dir)
    if trained_on is not None and Path(trained_on).resolve() != Path(data_dir).resolve():
        notes.append(f"resuming on {data_dir}, the run was trained on {trained_on}")
    return TrainSetup(run=run, data_dir=Path(data_dir), run_dir=run_dir, resume=True, notes=notes, fsdp=fsdp)


def _check_memory(run, fsdp: bool) -> None:
    from gpt2cli.memory import check_training_memory

    check_training_memory(
        run.model, run.train.batch_size, run.train.block_size, run.train.device, run.train.activation_checkpointing,
        full_logits=run.train.loss == "full", sharded=fsdp,
    )


def _resume_tokenizer(run_dir: RunDir) -> str:
    from gpt2cli.checkpoint import read_metadata
    from gpt2cli.tokenizer import TOKENIZER_NAME

    if run_dir.ckpt.exists():
        return read_metadata(run_dir.ckpt).get("tokenizer", TOKENIZER_NAME)
    return TOKENIZER_NAME


def _trained_on(run_dir: RunDir) -> str | None:
    if not run_dir.config.is_file():
        return None
    try:
        value = json.loads(run_dir.config.read_text(encoding="utf-8")).get("data")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def plan_run(
    preset: str | None,
    overrides: list[str],
    data_dir: Path,
    out_dir: Path,
    resume: bool = False,
    init_from: str | None = None,
    fsdp: bool = False,
) -> TrainSetup:
    """The one entry point: a fresh run from `preset` (default tiny, or finetune with
    `init_from`: pretrained weights, see weights_source.py) or a resumed one."""
    if Path(out_dir).is_dir():
        with RunDir(out_dir).lock():  # a run writing there now is the first thing to say; train() locks for real
            pass
    if resume:
        setup = plan_resume(overrides, data_dir, out_dir, fsdp)
        if preset is not None:
            setup.notes.append(f"--preset {preset} ignored on --resume: the config comes from the checkpoint")
        if init_from is not None:
            setup.notes.append(f"--init-from {init_from} ignored on --resume: the weights come from the checkpoint")
        return setup
    return plan_fresh(preset or default_preset(init_from), overrides, data_dir, out_dir, init_from, fsdp)


def default_preset(init_from: str | None) -> str:
    return "finetune" if init_from else "tiny"
