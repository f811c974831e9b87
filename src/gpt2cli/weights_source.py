"""Where a model's starting weights come from: a gpt2cli checkpoint, a Hugging
Face GPT-2 (directory or model.safetensors), or a hub name (hub.py).

`resolve_source` reads headers and configs only (names and shapes are checked
before any tensor is read); `load_into` then copies the tensors one at a time,
so a 1.5B-parameter source never sits in memory twice. A model whose context
is shorter than the source's takes the first rows of the position table
(nanoGPT's `crop_block_size`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from gpt2cli.checkpoint import (
    FORMAT,
    check_finite,
    check_tensors,
    checkpoint_config,
    read_header,
    read_metadata,
    utf8_name,
)
from gpt2cli.config import ModelConfig
from gpt2cli.errors import UserError, environment_message
from gpt2cli.model import GPT

# A hub repo id: `name` or `owner/name` (letters, digits, `-`, `_`, `.`).
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".toml")


@dataclass
class WeightsSource:
    """A safetensors file whose tensors, renamed, fill a gpt2cli GPT of `config`'s shape."""

    label: str  # what a checkpoint records as its origin (a path, or owner/name@commit)
    path: Path  # the safetensors file
    config: ModelConfig
    names: dict[str, str]  # our tensor name -> the file's
    transposed: frozenset[str] = field(default_factory=frozenset)  # our names stored (in, out) (Conv1D)


def load_into(model: GPT, source: WeightsSource) -> None:
    """Copy the source's weights into `model` (same shape, context at most the source's)."""
    cfg, src = model.config, source.config
    for key in ("n_layer", "n_head", "n_embd", "vocab_size", "bias", "attention"):
        if getattr(cfg, key) != getattr(src, key):
            raise UserError(f"{source.label}: its {key} is {getattr(src, key)!r}, the model's {getattr(cfg, key)!r}")
    if cfg.block_size > src.block_size:
        raise UserError(f"{source.label}: has {src.block_size} positions, fewer than the model's {cfg.block_size}")
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    V = cfg.vocab_size
    try:
        with utf8_name(source.path) as name, safe_open(name, framework="pt") as f, torch.no_grad():
            for ours, theirs in source.names.items():
                t = check_finite(source.path, theirs, f.get_tensor(theirs))
                if ours in source.transposed:
                    t = t.t()
                target = params[ours]
                if ours == "transformer.wte.weight":
                    target[:V].copy_(t)
                    target[V:].zero_()
                elif ours == "transformer.wpe.weight":
                    target.copy_(t[: cfg.block_size])  # crop_block_size: the first positions
                else:
                    target.copy_(t)
    except UserError:
        raise
    except Exception as err:  # safetensors raises its own error types for damaged files
        if environment_message(err) is not None:  # no memory, too many files: the machine, not the file
            raise
        raise UserError(f"{source.path}: damaged safetensors file ({err})") from None


def _gpt2cli_source(path: Path, header: dict) -> WeightsSource:
    cfg = checkpoint_config(path, read_metadata(path, header))
    check_tensors(path, header, cfg)
    names = {k: k for k in header if k != "__metadata__"}
    return WeightsSource(label=str(path), path=path, config=cfg, names=names)


def local_source(path: Path) -> WeightsSource:
    """A file or directory on disk: gpt2cli checkpoint or run dir, or a Hugging Face GPT-2."""
    from gpt2cli.convert import hf_source  # convert imports this module

    if path.is_dir() and not (path / "model.safetensors").exists() and (path / "ckpt.safetensors").is_file():
        path = path / "ckpt.safetensors"  # a run dir
    if path.is_file():
        header = read_header(path)
        if (header.get("__metadata__") or {}).get("format") == FORMAT:
            return _gpt2cli_source(path, header)
    return hf_source(path)


def looks_like_hub_name(text: str) -> bool:
    return bool(HUB_NAME.fullmatch(text)) and not text.lower().endswith(FILE_SUFFIXES) and ".." not in text


def resolve_source(text: str, flag: str = "--init-from") -> WeightsSource:
    """A path if one exists there, else a hub name (downloaded or taken from the cache)."""
    path = Path(text)
    if path.exists():
        return local_source(path)
    if not looks_like_hub_name(text):
        raise UserError(f"{flag} {text}: no such file or directory")
    return hub_source(text, flag)


def hub_source(name: str, flag: str) -> WeightsSource:
    """Hub model `name` (from the cache or downloaded), labelled owner/name@commit."""
    from gpt2cli.convert import hf_source
    from gpt2cli.hub import download

    folder, commit = download(name, flag)
    source = hf_source(folder, hub_name=name)
    source.label = f"{name}@{commit}"
    return source
