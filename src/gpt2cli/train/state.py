"""Resume state: everything besides the checkpoint that makes `--resume` exact.

One safetensors file beside the checkpoint (`ckpt.optim.safetensors`) holds
tensors only and a JSON header — no pickle, nothing that runs code on load:

- `model.NAME`: the fp32 weights themselves. The checkpoint has them too, but
  the two files are renamed one after the other, and a kill between the two
  renames must still leave a consistent resume point; so this file alone is
  the resume point, and the checkpoint is the user-facing copy.
- `optim.exp_avg.NAME`, `optim.exp_avg_sq.NAME`, `optim.step.NAME`: AdamW's
  moments and step counts per parameter name.
- `rng.torch_cpu`, `rng.cuda.I`, `rng.python`, `rng.numpy`: generator states
  as integer tensors, so dropout after a resume draws the same masks.
- `scaler.scale` (fp16 on CUDA only).

Metadata: `format`, `step`, `tokens_seen`, `elapsed`, `skipped` (non-finite
steps skipped), `data` (the batch reader's position, JSON), `config`, `train`.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from gpt2cli.checkpoint import check_finite, read_header, save_safetensors, utf8_name
from gpt2cli.errors import UserError
from gpt2cli.train.optim import parameter_names

RESUME_FORMAT = "gpt2cli-resume/1"
MOMENTS = ("exp_avg", "exp_avg_sq", "step")


@dataclass
class Progress:
    """Where a run stands: what the loop needs besides tensors to continue."""

    step: int = 0
    tokens_seen: int = 0
    elapsed: float = 0.0  # seconds of training so far, summed over resumes
    skipped: int = 0  # non-finite steps skipped so far (--skip-nonfinite)
    data: dict[str, Any] = field(default_factory=dict)  # the train reader's state_dict()


def resume_path(ckpt: str | os.PathLike) -> Path:
    """RUN/ckpt.safetensors -> RUN/ckpt.optim.safetensors."""
    ckpt = Path(ckpt)
    return ckpt.with_name(ckpt.name.removesuffix(".safetensors") + ".optim.safetensors")


def _model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # named_parameters/buffers list a tied tensor once, as safetensors requires.
    named = dict(model.named_parameters())
    named.update(dict(model.named_buffers()))
    return named


def _rng_tensors() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, mt, gauss = random.getstate()
    tensors["rng.python"] = torch.tensor(mt, dtype=torch.int64)
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    extra = {"python": [version, gauss], "numpy": [name, int(pos), int(has_gauss), float(cached)]}
    return tensors, extra


def _restore_rng(f, names: set[str], extra: dict[str, Any]) -> None:
    torch.set_rng_state(f.get_tensor("rng.torch_cpu"))
    cuda = sorted((n for n in names if n.startswith("rng.cuda.")), key=lambda n: int(n.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([f.get_tensor(n) for n in cuda[: torch.cuda.device_count()]])
    if "rng.python" in names and "python" in extra:
        version, gauss = extra["python"]
        random.setstate((version, tuple(int(v) for v in f.get_tensor("rng.python").tolist()), gauss))
    if "rng.numpy" in names and "numpy" in extra:
        name, pos, has_gauss, cached = extra["numpy"]
        keys = f.get_tensor("rng.numpy").numpy().astype(np.uint32)
        np.random.set_state((name, keys, pos, has_gauss, cached))


def save_resume_state(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
    *,
    config_json: str,
    train_json: str,
    scaler: torch.amp.GradScaler | None = None,
    model_state: dict[str, torch.Tensor] | None = None,
    moments: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write the resume state atomically (temporary name, fsync, rename).

    model_state / moments: the full weights and AdamW state per parameter
    name when `model` / `optimizer` hold only a shard (FSDP, distributed.py).
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    if model_state is None:
        model_state = _model_tensors(model)
    else:
        # A state_dict lists tied weights under every name; keep the names the model's parameters use.
        model_state = {n: model_state.get(n, t) for n, t in _model_tensors(model).items()}
    for name, t in model_state.items():
        tensors[f"model.{name}"] = t.detach()
    if moments is None:
        state = optimizer.state_dict()["state"]
        moments = {name: state.get(index, {}) for index, name in enumerate(parameter_names(optimizer))}
    for name in parameter_names(optimizer):
        for key, value in moments.get(name, {}).items():
            if key in MOMENTS:
                tensors[f"optim.{key}.{name}"] = torch.as_tensor(value).detach()
    rng, rng_extra = _rng_tensors()
    tensors.update(rng)
    scaler_meta = None
    if scaler is not None and scaler.is_enabled():
        sd = scaler.state_dict()
        tensors["scaler.scale"] = torch.tensor(float(sd["scale"]), dtype=torch.float64)
        scaler_meta = {k: v for k, v in sd.items() if k != "scale"}
    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    metadata = {
        "format": RESUME_FORMAT,
        "step": str(progress.step),
        "tokens_seen": str(progress.tokens_seen),
        "elapsed": repr(progress.elapsed),
        "skipped": str(progress.skipped),
        "data": json.dumps(progress.data),
        "rng": json.dumps(rng_extra),
        "config": config_json,
        "train": train_json,
    }
    if scaler_meta is not None:
        metadata["scaler"] = json.dumps(scaler_meta)
    save_safetensors(tensors, path, metadata)
    return path


def read_resume_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The resume state's header; UserError when it is missing or not ours."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no resume state beside the checkpoint (the run cannot continue exactly)")
    meta = read_header(path).get("__metadata__") or {}
    if not isinstance(meta, dict) or meta.get("format") != RESUME_FORMAT:
        raise UserError(f"{path}: not a gpt2cli resume state (no format={RESUME_FORMAT})")
    return meta


def progress_from_metadata(path: str | os.PathLike, meta: dict[str, str]) -> Progress:
    try:
        return Progress(
            step=int(meta["step"]),
            tokens_seen=int(meta["tokens_seen"]),
            elapsed=float(meta["elapsed"]),
            skipped=int(meta.get("skipped", "0")),
            data=json.loads(meta["data"]),
        )
    except (KeyError, ValueError, TypeError):
        raise UserError(f"{path}: damaged resume state metadata") from None


def load_resume_state(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    scaler: torch.amp.GradScaler | None = None,
) -> Progress:
    """Restore weights, optimizer moments, RNG states (and scaler); return the progress.

    optimizer None: leave the moments for `read_resume_moments` (FSDP loads
    the weights before sharding and the moments after, distributed.py).
    """
    path = Path(path)
    meta = read_resume_metadata(path)
    progress = progress_from_metadata(path, meta)
    params = _model_tensors(model)
    try:
        with utf8_name(path) as name, safe_open(name, framework="pt", device="cpu") as f:
            stored = set(f.keys())
            missing = sorted(f"model.{n}" for n in params if f"model.{n}" not in stored)
            if missing:
                raise UserError(f"{path}: resume state does not match the model (missing {missing[0]})")
            with torch.no_grad():
                for name, target in params.items():
                    t = f.get_tensor(f"model.{name}")
                    if t.shape != target.shape:
                        raise UserError(
                            f"{path}: resume state tensor {name} has shape {tuple(t.shape)}, "
                            f"the model expects {tuple(target.shape)}"
                        )
                    target.copy_(check_finite(path, f"model.{name}", t))
            if optimizer is not None:
                by_name = _read_moments(path, f, stored, parameter_names(optimizer))
                state = {i: by_name[n] for i, n in enumerate(parameter_names(optimizer)) if n in by_name}
                sd = optimizer.state_dict()
                optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
            _restore_rng(f, stored, json.loads(meta.get("rng", "{}")))
            if scaler is not None and scaler.is_enabled() and "scaler.scale" in stored:
                scaler_sd = json.loads(meta.get("scaler", "{}"))
                scaler_sd["scale"] = float(f.get_tensor("scaler.scale"))
                scaler.load_state_dict(scaler_sd)
    except SafetensorError as err:  # a damaged file
        raise UserError(f"{path}: damaged resume state ({err})") from None
    return progress


def _read_moments(path: Path, f, stored: set[str], names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name in names:
        entry = {k: f.get_tensor(f"optim.{k}.{name}") for k in MOMENTS if f"optim.{k}.{name}" in stored}
        if entry:
            if set(entry) != set(MOMENTS):
                raise UserError(f"{path}: resume state has incomplete optimizer moments for {name}")
            out[name] = entry
    return out


def read_resume_moments(path: str | os.PathLike, names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """AdamW moments per parameter name (CPU tensors), for optimizers whose state is sharded."""
    path = Path(path)
    try:
        with utf8_name(path) as name, safe_open(name, framework="pt", device="cpu") as f:
            return _read_moments(path, f, set(f.keys()), names)
    except SafetensorError as err:
        raise UserError(f"{path}: damaged resume state ({err})") from None
