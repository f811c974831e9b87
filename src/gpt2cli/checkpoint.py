"""One checkpoint format: safetensors weights under GPT-2 names + JSON metadata.

Metadata (all strings, as safetensors requires): `format` = "gpt2cli/1",
`config` (ModelConfig JSON), `tokenizer`, `step`, `tokens_seen`, `train`
(resolved TrainConfig JSON) and any extra keys the caller adds. Nothing here
unpickles: safetensors holds only tensors and a JSON header.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gpt2cli.atomic import atomic_path
from gpt2cli.config import ModelConfig, model_config_from_dict
from gpt2cli.errors import UserError, environment_message, shown_path, utf8_text
from gpt2cli.jsonfile import parse_json_object
from gpt2cli.model import GPT
from gpt2cli.tokenizer import TOKENIZER_NAME

FORMAT = "gpt2cli/1"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit; the metadata is data, never code
# Bytes per element of the safetensors dtypes (the format's spec).
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}
LAYER_NAME = re.compile(r"transformer\.h\.(\d+)\.")


@contextlib.contextmanager
def utf8_name(path: str | os.PathLike, write: bool = False) -> Iterator[str]:
    """A name safetensors can open for `path`.

    safetensors takes only UTF-8 file names; Linux allows any bytes. Such a
    file is read through its /proc/self/fd link, which names the same file;
    one to write is written under a UTF-8 name in its directory (reached
    through the directory's link, as the directory's name may not be UTF-8
    either) and renamed to `path` once complete.
    """
    name = os.fspath(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        yield name
        return
    if not os.path.isdir("/proc/self/fd"):
        raise UserError(f"{shown_path(name)}: the file name is not UTF-8; rename the file")
    if not write:
        fd = os.open(name, os.O_RDONLY)
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    parent, target = os.path.split(name)
    dfd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY)
    tmp = f".gpt2cli-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        yield f"/proc/self/fd/{dfd}/{tmp}"
        os.replace(tmp, target, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    finally:
        os.close(dfd)


def export_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Weights under GPT-2 names; the tied head and vocabulary padding left out."""
    V = model.config.vocab_size
    out = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        if name == "transformer.wte.weight":
            t = t[:V]
        out[name] = t.detach().contiguous().cpu()
    return out


def save_checkpoint(model: GPT, path: str | os.PathLike, **meta: Any) -> Path:
    """Write `model` (and `meta`) to `path` atomically. Returns the path."""
    path = Path(path)
    metadata = {
        "format": FORMAT,
        "config": model.config.model_dump_json(),
        "tokenizer": TOKENIZER_NAME,
        "step": "0",
        "tokens_seen": "0",
    }
    for key, value in meta.items():
        # safetensors metadata must be valid UTF-8.
        metadata[key] = utf8_text(value) if isinstance(value, str) else json.dumps(value)
    save_safetensors(export_state_dict(model), path, metadata)
    return path


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically, whatever bytes its name holds."""
    with atomic_path(path) as tmp:
        try:
            with utf8_name(tmp, write=True) as name:
                save_file(tensors, name, metadata=metadata)
        except SafetensorError as err:  # safetensors reports I/O failures (disk full) as its own type
            raise OSError(str(err)) from None


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The safetensors JSON header, checked against the file's length.

    Raises UserError for anything that is not a complete safetensors file.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a .safetensors checkpoint")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{path}: empty file, expected a .safetensors checkpoint")
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise UserError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or n + 8 > size:
            if head[:2] == b"\x80\x02" or head[:1] == b"\x80" or head[:2] == b"PK":
                raise UserError(f"{path}: a pickle/torch.save file, not safetensors; refusing to load it")
            raise UserError(f"{path}: not a safetensors file, or truncated (header says {n} bytes)")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise UserError(f"{path}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: not a safetensors file (header is not a JSON object)")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            # The spec's metadata: a flat map of strings, nothing else.
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise UserError(f"{path}: not a safetensors file (__metadata__ is not a map of strings)")
            continue
        if not _valid_entry(info):
            raise UserError(f"{path}: not a safetensors file (bad entry {name[:80]!r})")
        end = max(end, info["data_offsets"][1])
    if 8 + n + end != size:
        raise UserError(
            f"{path}: truncated or damaged safetensors file ({size} bytes on disk, header expects {8 + n + end})"
        )
    return header


def _counts(value: Any, length: int | None = None) -> bool:
    """A JSON list of non-negative integers (of `length` items when given)."""
    return (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    )


def _valid_entry(info: Any) -> bool:
    """One tensor's header entry: known dtype, a shape, offsets spanning exactly its bytes."""
    if not isinstance(info, dict) or info.get("dtype") not in DTYPE_BYTES:
        return False
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not _counts(shape) or not _counts(offsets, 2) or offsets[0] > offsets[1]:
        return False
    return math.prod(shape) * DTYPE_BYTES[info["dtype"]] == offsets[1] - offsets[0]


def read_metadata(path: str | os.PathLike, header: dict[str, Any] | None = None) -> dict[str, str]:
    """Our metadata of a checkpoint; refuses files that are not gpt2cli checkpoints."""
    header = header if header is not None else read_header(path)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(
            f"{path}: a safetensors file but not a gpt2cli checkpoint (no format={FORMAT}); "
            "for Hugging Face weights use `gpt2 convert from-hf`"
        )
    return meta


def checkpoint_config(path: str | os.PathLike, meta: dict[str, str] | None = None) -> ModelConfig:
    meta = meta if meta is not None else read_metadata(path)
    if not isinstance(meta.get("config"), str):
        raise UserError(f"{path}: checkpoint metadata has no `config`")
    data = parse_json_object(meta["config"], f"{path}: checkpoint metadata `config`", "a model config")
    return model_config_from_dict(data, f"{path}: config")


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes a checkpoint of this config holds (built on the meta device)."""
    with torch.device("meta"):
        model = GPT(cfg, init=False)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    shapes["transformer.wte.weight"] = (cfg.vocab_size, cfg.n_embd)
    return shapes


def check_tensors(path: str | os.PathLike, header: dict[str, Any], cfg: ModelConfig) -> None:
    """Refuse a checkpoint whose tensors do not match its own config."""
    # From the header alone first: a config that claims more than the file
    # holds (say n_layer=10**9) must not get a model built for it.
    for name, shape in (
        ("transformer.wte.weight", [cfg.vocab_size, cfg.n_embd]),
        ("transformer.wpe.weight", [cfg.block_size, cfg.n_embd]),
    ):
        got = header[name].get("shape") if name in header else None
        if got is None:
            raise UserError(f"{path}: tensors do not match its config (missing [{name!r}])")
        if got != shape:
            raise UserError(f"{path}: tensor {name} has shape {tuple(got)}, config expects {tuple(shape)}")
    layers = {int(m.group(1)) for k in header if (m := LAYER_NAME.match(k))}
    # Distinct indices, as many as n_layer, the largest n_layer - 1: exactly 0..n_layer-1.
    if len(layers) != cfg.n_layer or max(layers, default=-1) != cfg.n_layer - 1:
        raise UserError(f"{path}: tensors do not match its config ({len(layers)} layers, config says {cfg.n_layer})")
    expected = expected_shapes(cfg)
    names = {k for k in header if k != "__metadata__"}
    missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
    if missing or extra:
        what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise UserError(f"{path}: tensors do not match its config ({what})")
    for name, shape in expected.items():
        got = tuple(header[name].get("shape", ()))
        if got != shape:
            raise UserError(f"{path}: tensor {name} has shape {got}, config expects {shape}")


def check_finite(path: str | os.PathLike, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Refuse a weight holding NaN or inf: such a model samples garbage (or indexes out of range)."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise UserError(
            f"{path}: tensor {name} holds {bad:,} non-finite value{'s' if bad != 1 else ''} (NaN or inf); "
            "the weights are unusable (a diverged run? resume from an earlier checkpoint)"
        )
    return tensor


def load_state_into(model: GPT, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
    """Load the checkpoint's tensors into `model`, checking names and shapes exactly."""
    check_tensors(path, read_header(path), model.config)
    try:
        with utf8_name(path) as name, safe_open(name, framework="pt", device=str(device)) as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as err:  # safetensors raises its own error types for damaged files
        if environment_message(err) is not None:  # no memory, too many files: the machine, not the file
            raise
        raise UserError(f"{path}: damaged safetensors file ({err})") from None
    for name, t in tensors.items():
        check_finite(path, name, t)
    V = model.config.vocab_size
    with torch.no_grad():
        params = dict(model.named_parameters())
        params.update(dict(model.named_buffers()))
        for name, t in tensors.items():
            target = params[name]
            if name == "transformer.wte.weight":
                target[:V].copy_(t)
                target[V:].zero_()
            else:
                target.copy_(t)


def load_checkpoint_with_meta(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model, metadata): the model rebuilt from the checkpoint alone, in eval mode."""
    header = read_header(path)
    meta = read_metadata(path, header)
    cfg = checkpoint_config(path, meta)
    check_tensors(path, header, cfg)  # before building the model: the config may be a lie
    model = GPT(cfg, init=False).to(device)  # every weight comes from the file
    load_state_into(model, path, device)
    model.eval()
    return model, meta


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> GPT:
    """Rebuild the model from a checkpoint alone (eval mode, on `device`)."""
    return load_checkpoint_with_meta(path, device)[0]
