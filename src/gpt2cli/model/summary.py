"""Describe a model's shape and size, from a preset or a checkpoint (no weights loaded for presets)."""

from __future__ import annotations

from pathlib import Path

import torch

from gpt2cli.checkpoint import check_tensors, checkpoint_config, read_header, read_metadata
from gpt2cli.config import ModelConfig, load_run_config
from gpt2cli.model import GPT


def count_params(cfg: ModelConfig) -> tuple[int, int]:
    """(total, non-embedding) parameters, counted on a meta-device model (no memory)."""
    with torch.device("meta"):
        model = GPT(cfg, init=False)
    return model.num_params(), model.num_params(non_embedding=True)


def _describe(cfg: ModelConfig, source: str) -> dict:
    total, non_emb = count_params(cfg)
    return {
        "source": source,
        "config": cfg.model_dump(),
        "parameters": total,
        "non_embedding_parameters": non_emb,
    }


def describe_preset(name: str) -> dict:
    return _describe(load_run_config(name).model, f"preset {name}")


def describe_checkpoint(path: Path) -> dict:
    header = read_header(path)
    meta = read_metadata(path, header)
    cfg = checkpoint_config(path, meta)
    check_tensors(path, header, cfg)
    info = _describe(cfg, str(path))
    for key in ("step", "tokens_seen"):
        if meta.get(key, "").isdigit():
            info[key] = int(meta[key])
    return info
