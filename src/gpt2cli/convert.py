"""Hugging Face GPT-2 <-> gpt2cli checkpoints.

HF stores the attention and MLP matrices as `Conv1D` weights, i.e. (in, out),
the transpose of nn.Linear; its `attn.bias` / `attn.masked_bias` are causal-mask
buffers, not weights. Only safetensors files are read (never pytorch_model.bin:
that is a pickle).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gpt2cli.atomic import atomic_path, write_text_atomic
from gpt2cli.checkpoint import (
    check_finite,
    export_state_dict,
    load_checkpoint_with_meta,
    read_header,
    save_checkpoint,
    utf8_name,
)
from gpt2cli.config import ModelConfig, model_config_from_dict
from gpt2cli.errors import UserError
from gpt2cli.model import GPT

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
NOT_WEIGHTS = ({"attn", "bias"}, {"attn", "masked_bias"})  # h.{i}.attn.bias: mask buffers
# GPT-2's released widths -> head counts, for a bare model.safetensors without config.json.
KNOWN_HEADS = {768: 12, 1024: 16, 1280: 20, 1600: 25}


def _hf_files(src: Path) -> tuple[Path, Path | None]:
    if not src.exists():
        raise UserError(f"{src}: no such file or directory")
    if src.is_dir():
        weights = src / "model.safetensors"
        if not weights.is_file():
            if (src / "pytorch_model.bin").exists():
                raise UserError(f"{src}: only pytorch_model.bin (a pickle) found; need model.safetensors")
            raise UserError(f"{src}: no model.safetensors in this directory")
        config = src / "config.json"
        return weights, config if config.is_file() else None
    config = src.with_name("config.json")
    return src, config if config.is_file() else None


def _config_from_hf(config_path: Path | None, tensors: dict[str, torch.Tensor], src: Path) -> ModelConfig:
    wte = tensors["wte.weight"]
    n_layer = 1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("h."))
    if config_path is not None:
        try:
            hf = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{config_path}: not valid JSON") from None
        if not isinstance(hf, dict):
            raise UserError(f"{config_path}: not a JSON object (a Hugging Face config.json holds one)")
        if hf.get("model_type", "gpt2") != "gpt2":
            raise UserError(f"{config_path}: model_type {hf.get('model_type')!r} is not gpt2")
        n_head = hf.get("n_head")
    else:
        n_head = KNOWN_HEADS.get(wte.shape[1])
        if n_head is None:
            raise UserError(f"{src}: no config.json beside it to tell the number of heads")
    return model_config_from_dict(
        dict(
            n_layer=n_layer,
            n_head=n_head,
            n_embd=wte.shape[1],
            block_size=tensors["wpe.weight"].shape[0],
            vocab_size=wte.shape[0],
            bias="ln_f.bias" in tensors,
            attention="standard",
        ),
        f"{src}: config",
    )


def from_hf(src: str | Path, dst: str | Path) -> GPT:
    """Convert a Hugging Face GPT-2 (directory or model.safetensors) to our checkpoint."""
    src, dst = Path(src), Path(dst)
    weights, config_path = _hf_files(src)
    read_header(weights)  # clean error for truncated or foreign files
    tensors: dict[str, torch.Tensor] = {}
    with utf8_name(weights) as name, safe_open(name, framework="pt") as f:
        for name in f.keys():
            short = name.removeprefix("transformer.")
            if set(short.split(".")[-2:]) in NOT_WEIGHTS or short == "lm_head.weight":
                continue
            tensors[short] = check_finite(weights, name, f.get_tensor(name))
    if "wte.weight" not in tensors or "wpe.weight" not in tensors:
        raise UserError(f"{weights}: not a GPT-2 checkpoint (no wte/wpe weights)")
    cfg = _config_from_hf(config_path, tensors, src)
    model = GPT(cfg)
    ours = {}
    for short, t in tensors.items():
        if short.endswith(CONV1D_SUFFIXES):
            t = t.t()
        ours["transformer." + short] = t.float().contiguous()
    expected = export_state_dict(model)
    if set(ours) != set(expected):
        diff = sorted(set(ours) ^ set(expected))[:3]
        raise UserError(f"{weights}: tensor names do not match a GPT-2 of this shape ({diff})")
    V = cfg.vocab_size
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, t in ours.items():
            if tuple(t.shape) != tuple(expected[name].shape):
                raise UserError(f"{weights}: {name} has shape {tuple(t.shape)}, expected {tuple(expected[name].shape)}")
            if name == "transformer.wte.weight":
                params[name][:V].copy_(t)
            else:
                params[name].copy_(t)
    save_checkpoint(model, dst, source=json.dumps(str(src)))
    return model


def hf_config(cfg: ModelConfig) -> dict:
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_embd": cfg.n_embd,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "vocab_size": cfg.vocab_size,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "tie_word_embeddings": True,
        "scale_attn_weights": True,
        "torch_dtype": "float32",
    }


def to_hf(ckpt: str | Path, dst_dir: str | Path) -> Path:
    """Export our checkpoint as a directory `GPT2LMHeadModel.from_pretrained` loads."""
    ckpt, dst_dir = Path(ckpt), Path(dst_dir)
    model, _ = load_checkpoint_with_meta(ckpt)
    cfg = model.config
    if cfg.attention != "standard":
        raise UserError(f"{ckpt}: {cfg.attention} attention has no Hugging Face GPT-2 equivalent; only standard converts")
    if not cfg.bias:
        raise UserError(f"{ckpt}: a model without biases has no Hugging Face GPT-2 equivalent")
    if dst_dir.exists() and not dst_dir.is_dir():
        raise UserError(f"{dst_dir}: exists and is not a directory")
    try:
        dst_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{dst_dir}: cannot create directory ({err.strerror})") from None
    tensors = {}
    for name, t in export_state_dict(model).items():
        if name.endswith(CONV1D_SUFFIXES):
            t = t.t().contiguous()
        tensors[name] = t
    with atomic_path(dst_dir / "model.safetensors") as tmp:
        try:
            with utf8_name(tmp, write=True) as name:
                save_file(tensors, name, metadata={"format": "pt"})
        except SafetensorError as err:  # an I/O failure (disk full) in safetensors' own error type
            raise OSError(str(err)) from None
    write_text_atomic(dst_dir / "config.json", json.dumps(hf_config(cfg), indent=2) + "\n")
    return dst_dir
