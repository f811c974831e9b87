"""Where a model's starting weights come from: a gpt2cli checkpoint, a Hugging
Face GPT-2 (directory, model.safetensors, or safetensors shards and their
index), or a hub name (hub.py).

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
from gpt2cli.hf_shards import INDEX_SUFFIX
from gpt2cli.model import GPT

# A hub repo id: `name` or `owner/name` (letters, digits, `-`, `_`, `.`).
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json", ".toml")


@dataclass
class WeightsSource:
    """A safetensors file whose tensors, renamed, fill a gpt2cli GPT of `config`'s shape."""

    label: str  # what a checkpoint records as its origin (a path, or owner/name@commit)
    path: Path  # the safetensors file, or the index of sharded weights
    config: ModelConfig
    names: dict[str, str]  # our tensor name -> the file's
    transposed: frozenset[str] = field(default_factory=frozenset)  # our names stored (in, out) (Conv1D)
    shards: dict[str, Path] = field(default_factory=dict)  # sharded: the file's tensor name -> the shard holding it

    def file_of(self, theirs: str) -> Path:
        return self.shards.get(theirs, self.path)

    @property
    def weight_files(self) -> list[Path]:
        """The safetensors files holding the tensors (the shards, when sharded)."""
        return sorted(set(self.shards.values())) or [self.path]

    @property
    def files(self) -> list[Path]:
        """Every file read (the index too, when sharded)."""
        return [self.path, *self.weight_files] if self.shards else [self.path]


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
    by_file: dict[Path, list[tuple[str, str]]] = {path: [] for path in source.weight_files}
    for ours, theirs in source.names.items():
        by_file[source.file_of(theirs)].append((ours, theirs))
    for path, names in by_file.items():  # one shard open at a time, its tensors memory-mapped
        _load_file(path, names, source.transposed, params, cfg)


def _load_file(path: Path, names: list[tuple[str, str]], transposed: frozenset[str],
               params: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    V = cfg.vocab_size
    try:
        with utf8_name(path) as name, safe_open(name, framework="pt") as f, torch.no_grad():
            for ours, theirs in names:
                t = check_finite(path, theirs, f.get_tensor(theirs))
                if ours in transposed:
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
        raise UserError(f"{path}: damaged safetensors file ({err})") from None


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
    if path.is_file() and not path.name.endswith(INDEX_SUFFIX):
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
