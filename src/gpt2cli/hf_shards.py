"""Hugging Face weights sharded over several safetensors files.

transformers' `save_pretrained` splits weights above its `max_shard_size`
into model-0000K-of-0000N.safetensors files beside a
model.safetensors.index.json whose "weight_map" says which file holds each
tensor. Here the index is read and checked (every shard a plain
.safetensors file name in the same directory: no folders, no `..`), and the
shards' headers merged into one header keyed by tensor name, so the rest of
the Hugging Face reader treats them as one file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpt2cli.checkpoint import read_header
from gpt2cli.errors import UserError
from gpt2cli.jsonfile import read_json_object

INDEX = "model.safetensors.index.json"
INDEX_SUFFIX = ".safetensors.index.json"
MAX_INDEX_BYTES = 16 * 2**20


def weight_map(index: Path) -> dict[str, str]:
    """The index's tensor name -> shard file name, each name checked to stay in the index's directory."""
    size = index.stat().st_size
    if size > MAX_INDEX_BYTES:  # gpt2-xl's is 30 kB; a hostile one must not fill memory
        raise UserError(f"{index}: {size:,} bytes, too large for a shard index")
    data = read_json_object(index, "a safetensors shard index with a weight_map")
    mapping = data.get("weight_map")
    if not isinstance(mapping, dict) or not mapping:
        raise UserError(f"{index}: no weight_map (tensor name -> shard file name)")
    for tensor, file in mapping.items():
        if not isinstance(file, str):
            raise UserError(f"{index}: weight_map gives tensor {tensor[:80]!r} no file name")
        if "/" in file or "\\" in file or ".." in file or "\0" in file or not file.endswith(".safetensors"):
            raise UserError(
                f"{index}: shard {file[:80]!r} is not a .safetensors file name in this directory "
                "(no folders, no ..)"
            )
    return mapping


def shard_names(index: Path) -> list[str]:
    """The shard files the index names, each once, in order."""
    return sorted(set(weight_map(index).values()))


def sharded_header(index: Path, hub_name: str | None = None) -> tuple[dict[str, Any], dict[str, Path]]:
    """(one header for all shards, tensor name -> the shard holding it).

    Every shard is checked as a safetensors file (never unpickled), and every
    tensor the index names must be in the shard it names."""
    mapping = weight_map(index)
    headers: dict[str, dict[str, Any]] = {}
    for file in sorted(set(mapping.values())):
        path = index.parent / file
        if not path.is_file():
            if hub_name:
                raise UserError(
                    f"{hub_name}: shard {file} named in {INDEX} is not in the Hugging Face cache "
                    "(offline? connect once to download it)"
                )
            raise UserError(f"{path}: no such file ({INDEX} names it as a shard)")
        headers[file] = read_header(path)
    header: dict[str, Any] = {}
    files: dict[str, Path] = {}
    for tensor, file in mapping.items():
        if tensor == "__metadata__" or tensor not in headers[file]:
            raise UserError(f"{index.parent / file}: no tensor {tensor[:80]!r}, though {INDEX} puts it there")
        header[tensor] = headers[file][tensor]
        files[tensor] = index.parent / file
    return header, files
