"""Hugging Face GPT-2 <-> gpt2cli checkpoints.

HF stores the attention and MLP matrices as `Conv1D` weights, i.e. (in, out),
the transpose of nn.Linear; its `attn.bias` / `attn.masked_bias` are causal-mask
buffers, not weights. Only safetensors files are read (never pytorch_model.bin:
that is a pickle).
"""

from __future__ import annotations

import json
from pathlib import Path

from gpt2cli.atomic import write_text_atomic
from gpt2cli.checkpoint import (
    LAYER_NAME,
    expected_shapes,
    export_state_dict,
    load_checkpoint_with_meta,
    read_header,
    save_checkpoint,
    save_safetensors,
)
from gpt2cli.config import ModelConfig, model_config_from_dict
from gpt2cli.errors import UserError
from gpt2cli.hf_shards import INDEX, INDEX_SUFFIX, sharded_header
from gpt2cli.jsonfile import read_json_object
from gpt2cli.model import GPT
from gpt2cli.outputs import (
    Output,
    check_output_dir,
    check_outputs,
    first_names,
    missing_dirs,
    remove_empty_dirs,
)
from gpt2cli.weights_source import WeightsSource, hub_source, load_into, looks_like_hub_name

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
NOT_WEIGHTS = ({"attn", "bias"}, {"attn", "masked_bias"})  # h.{i}.attn.bias: mask buffers
# GPT-2's released widths -> head counts, for a bare model.safetensors without config.json.
KNOWN_HEADS = {768: 12, 1024: 16, 1280: 20, 1600: 25}
# The tanh approximation of GELU under its Hugging Face names (the same function).
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
LAYER_NORM_EPS = 1e-5


def _hf_files(src: Path, hub_name: str | None = None) -> tuple[Path, Path | None]:
    """(model.safetensors or the shard index, config.json or None)."""
    if not src.exists():
        raise UserError(f"{src}: no such file or directory")
    if src.is_dir():
        weights = src / "model.safetensors"
        if not weights.is_file() and (src / INDEX).is_file():
            weights = src / INDEX
        elif not weights.is_file():
            if hub_name is not None:
                raise UserError(
                    f"{hub_name}: the hub repo has no model.safetensors (gpt2cli never loads pickle "
                    "weights such as pytorch_model.bin)"
                )
            if (src / "pytorch_model.bin").exists():
                raise UserError(f"{src}: only pytorch_model.bin (a pickle) found; need model.safetensors")
            raise UserError(f"{src}: no model.safetensors in this directory")
        config = src / "config.json"
        return weights, config if config.is_file() else None
    config = src.with_name("config.json")
    return src, config if config.is_file() else None


def _refuse(config_path: Path, key: str, value, ours: str) -> UserError:
    return UserError(f"{config_path}: {key}={json.dumps(value)} cannot be reproduced (gpt2cli's GPT-2 has {ours})")


def _check_hf_fields(hf: dict, config_path: Path, n_embd: int) -> None:
    """Refuse every GPT2Config field whose value changes the logits in a way our model cannot follow."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise UserError(f"{config_path}: model_type {hf.get('model_type')!r} is not gpt2")
    act = hf.get("activation_function", "gelu_new")
    if act not in TANH_GELUS:
        raise _refuse(config_path, "activation_function", act, "the tanh GELU, gelu_new")
    eps = hf.get("layer_norm_epsilon", LAYER_NORM_EPS)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps != LAYER_NORM_EPS:
        raise _refuse(config_path, "layer_norm_epsilon", eps, f"layer_norm_epsilon={LAYER_NORM_EPS}")
    n_inner = hf.get("n_inner")
    if n_inner is not None and (isinstance(n_inner, bool) or n_inner != 4 * n_embd):
        raise _refuse(config_path, "n_inner", n_inner, f"an MLP 4 x n_embd = {4 * n_embd} wide")
    for key, ours in (("scale_attn_weights", True), ("tie_word_embeddings", True),
                      ("scale_attn_by_inverse_layer_idx", False), ("reorder_and_upcast_attn", False),
                      ("add_cross_attention", False)):
        value = hf.get(key, ours)
        if value is not ours:
            raise _refuse(config_path, key, value, f"{key}={json.dumps(ours)}")


def _shape(header: dict, name: str) -> list[int]:
    return list(header[name]["shape"])


def _hf_model_config(config_path: Path | None, header: dict, prefix: str, n_layer: int, src: Path) -> ModelConfig:
    vocab_size, n_embd = _shape(header, prefix + "wte.weight")
    block_size = _shape(header, prefix + "wpe.weight")[0]
    if config_path is not None:
        hf = read_json_object(config_path, "a Hugging Face GPT2Config")
        _check_hf_fields(hf, config_path, n_embd)
        for key, actual in (("n_embd", n_embd), ("n_layer", n_layer), ("n_positions", block_size),
                            ("vocab_size", vocab_size)):
            if key in hf and hf[key] != actual:
                raise UserError(f"{config_path}: {key}={json.dumps(hf[key])} but the weights have {actual}")
        n_head = hf.get("n_head")
        if n_head is None:
            raise UserError(f"{config_path}: no n_head")
    else:
        n_head = KNOWN_HEADS.get(n_embd)
        if n_head is None:
            raise UserError(f"{src}: no config.json beside it to tell the number of heads")
    return model_config_from_dict(
        dict(
            n_layer=n_layer,
            n_head=n_head,
            n_embd=n_embd,
            block_size=block_size,
            vocab_size=vocab_size,
            bias=True,
            attention="standard",
        ),
        f"{config_path or src}: config",
    )


def hf_source(src: str | Path, hub_name: str | None = None) -> WeightsSource:
    """A Hugging Face GPT-2 (directory, model.safetensors or the index of sharded weights), checked from its
    headers and config alone."""
    src = Path(src)
    weights, config_path = _hf_files(src, hub_name)
    if weights.name.endswith(INDEX_SUFFIX):  # sharded: one header for all shards, and where each tensor is
        header, shards = sharded_header(weights, hub_name)
    else:
        header, shards = read_header(weights), {}  # clean error for truncated or foreign files
    names = [k for k in header if k != "__metadata__"]
    prefix = "transformer." if "transformer.wte.weight" in header else ""
    if prefix + "wte.weight" not in header or prefix + "wpe.weight" not in header:
        raise UserError(f"{weights}: not a GPT-2 checkpoint (no wte/wpe weights)")
    mapping: dict[str, str] = {}
    for name in names:
        short = name.removeprefix("transformer.")
        if set(short.split(".")[-2:]) in NOT_WEIGHTS or short == "lm_head.weight":
            continue
        mapping["transformer." + short] = name
    layers = {int(m.group(1)) for k in mapping if (m := LAYER_NAME.match(k))}
    n_layer = max(layers, default=-1) + 1
    cfg = _hf_model_config(config_path, header, prefix, n_layer, src)
    expected = expected_shapes(cfg)
    if set(mapping) != set(expected):
        diff = sorted(set(mapping) ^ set(expected))[:3]
        raise UserError(f"{weights}: tensor names do not match a GPT-2 of this shape ({diff})")
    transposed = frozenset(k for k in mapping if k.endswith(CONV1D_SUFFIXES))
    for ours, theirs in mapping.items():
        shape = tuple(_shape(header, theirs))
        if ours in transposed:
            shape = shape[::-1]
        if shape != expected[ours]:
            raise UserError(f"{weights}: {theirs} has shape {shape}, expected {expected[ours]}")
    return WeightsSource(label=str(src), path=weights, config=cfg, names=mapping, transposed=transposed,
                         shards=shards)


def from_hf(src: str | Path, dst: str | Path, force: bool = False) -> GPT:
    """Convert a Hugging Face GPT-2 (directory, model.safetensors or hub name) to our checkpoint.

    An existing `dst` is replaced only with `force`; never an input or a run dir's own file."""
    if not Path(src).exists() and looks_like_hub_name(str(src)):
        source = hub_source(str(src), "from-hf")
    else:
        source = hf_source(src)
    inputs = [p for p in (*source.files, source.path.with_name("config.json")) if p.is_file()]
    check_outputs([Output("", Path(dst))], inputs, force=force)
    model = GPT(source.config, init=False)  # every weight comes from the source
    load_into(model, source)
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


def _check_hf_dir(ckpt: Path, dst_dir: Path, force: bool) -> None:
    if not dst_dir.is_dir():
        return  # created below (or refused there: a file in the way)
    check_output_dir("", dst_dir, writer="gpt2 convert")
    entries = sorted(p.name for p in dst_dir.iterdir())
    if entries and not force:
        raise UserError(
            f"{dst_dir}: already holds files ({first_names(entries)}); pass --force to replace its config.json and "
            "model.safetensors, or choose an empty directory"
        )
    check_outputs(
        [Output("", dst_dir / "config.json"), Output("", dst_dir / "model.safetensors")], [ckpt], force=True
    )


def to_hf(ckpt: str | Path, dst_dir: str | Path, force: bool = False) -> Path:
    """Export our checkpoint as a directory `GPT2LMHeadModel.from_pretrained` loads.

    `dst_dir` must be new or empty (with `force`: any directory but a run dir or data dir)."""
    ckpt, dst_dir = Path(ckpt), Path(dst_dir)
    _check_hf_dir(ckpt, dst_dir, force)
    model, _ = load_checkpoint_with_meta(ckpt)
    cfg = model.config
    if cfg.attention != "standard":
        raise UserError(f"{ckpt}: {cfg.attention} attention has no Hugging Face GPT-2 equivalent; only standard converts")
    if not cfg.bias:
        raise UserError(f"{ckpt}: a model without biases has no Hugging Face GPT-2 equivalent")
    if dst_dir.exists() and not dst_dir.is_dir():
        raise UserError(f"{dst_dir}: exists and is not a directory")
    created = missing_dirs(dst_dir)
    try:
        dst_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{dst_dir}: cannot create directory ({err.strerror})") from None
    try:
        tensors = {}
        for name, t in export_state_dict(model).items():
            if name.endswith(CONV1D_SUFFIXES):
                t = t.t().contiguous()
            tensors[name] = t
        save_safetensors(tensors, dst_dir / "model.safetensors", {"format": "pt"})
        write_text_atomic(dst_dir / "config.json", json.dumps(hf_config(cfg), indent=2) + "\n")
    except BaseException:
        if created:
            # A dir this export made holds only what it wrote: half an export goes with it.
            (dst_dir / "model.safetensors").unlink(missing_ok=True)
            remove_empty_dirs(created)
        raise
    return dst_dir
