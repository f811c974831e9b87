"""`DATA_DIR/meta.json`: what a tokenized data dir holds and how it was made.

Shards are raw little-endian uint16 token ids with no header, nanoGPT's
train.bin layout (DESIGN.md "Files"); everything a reader needs to trust them
lives here: the tokenizer (name and ranks sha256, vocab size, EOT id), every
shard with its split, token count and sha256, every source file with its size
and sha256, and the split settings. It holds no time or worker count, so the
same corpus and flags always give the same bytes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gpt2cli.atomic import write_text_atomic
from gpt2cli.errors import UserError, shown_path
from gpt2cli.jsonfile import read_json_object
from gpt2cli.tokenizer import RANKS_SHA256

FORMAT = "gpt2cli-data/1"
META_NAME = "meta.json"
SPLITS = ("train", "val")
SHARD_NAME = re.compile(r"(train|val)_(\d{6})\.bin")
# meta.json lists shards and sources: kilobytes, megabytes for huge corpora.
# Anything far larger is not ours, and reading it whole could exhaust memory.
MAX_META_BYTES = 64 * 1024 * 1024


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str  # name inside DATA_DIR, e.g. "train_000000.bin"
    split: Literal["train", "val"]
    tokens: int = Field(gt=0)
    sha256: str


class SourceInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str  # as given on the command line (relative to DATA_DIR when inside it)
    format: Literal["text", "jsonl"]
    gzip: bool = False
    bytes: int = Field(ge=0)  # size on disk (compressed size for .gz)
    sha256: str  # of the bytes on disk
    documents: int = Field(ge=0)

    @field_validator("path", mode="before")
    @classmethod
    def _printable(cls, value):
        # A file name may hold any bytes on Linux; JSON holds text: bytes that are not UTF-8 become \xNN.
        return shown_path(value) if isinstance(value, str) else value


class SplitSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    val_fraction: float
    seed: int
    # How documents were assigned: see gpt2cli.data.split.
    method: str = "splitmix64(seed, document index) < val_fraction; both splits kept non-empty"


class ReadSettings(BaseModel):
    """How the sources were cut into documents."""

    model_config = ConfigDict(extra="forbid")

    doc_separator: Literal["eot-line", "blank-line"] = "eot-line"
    field: str = "text"
    strict: bool = False


class DataMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["gpt2cli-data/1"] = FORMAT
    tokenizer: str
    ranks_sha256: str
    vocab_size: int = Field(gt=0)
    eot_id: int = Field(ge=0)
    dtype: Literal["uint16"] = "uint16"
    shard_tokens: int = Field(gt=0)
    documents: dict[str, int]  # per split
    tokens: dict[str, int]  # per split, EOT tokens included
    shards: list[ShardInfo]
    sources: list[SourceInfo]
    split: SplitSettings
    reading: ReadSettings = ReadSettings()
    replaced_utf8_errors: int = 0  # invalid UTF-8 sequences replaced by U+FFFD
    skipped_empty_documents: int = 0
    builtin_stories: dict[str, int] | None = None  # {"bytes": n, "seed": s} when generated

    def split_shards(self, split: str) -> list[ShardInfo]:
        return [s for s in self.shards if s.split == split]


def meta_path(data_dir: str | os.PathLike) -> Path:
    return Path(data_dir) / META_NAME


def write_meta(data_dir: str | os.PathLike, meta: DataMeta) -> Path:
    """meta.json, atomically; written last, so its presence means the data is complete."""
    path = meta_path(data_dir)
    write_text_atomic(path, meta.model_dump_json(indent=2) + "\n")
    return path


def read_meta(data_dir: str | os.PathLike) -> DataMeta:
    """Parse and check DATA_DIR/meta.json; UserError names what is wrong."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise UserError(f"{data_dir}: no such data directory (run `gpt2 tokenize` first)")
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: not a directory (expected a tokenized data dir)")
    path = meta_path(data_dir)
    if not path.is_file():
        raise UserError(f"{path}: missing; {data_dir} is not a tokenized data dir (run `gpt2 tokenize`)")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{path}: empty file, not valid JSON (an interrupted `gpt2 tokenize`? run it again)")
    if size > MAX_META_BYTES:
        raise UserError(f"{path}: {size:,} bytes, too large for a data dir's meta.json")
    raw = read_json_object(path, "a data dir's meta.json")
    if raw.get("format") != FORMAT:
        raise UserError(f"{path}: unknown format {raw.get('format')!r} (expected {FORMAT!r})")
    try:
        meta = DataMeta.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if not where.isprintable():  # a key holding a newline must not break the one-line message
            where = repr(where)
        raise UserError(f"{path}: {where}: {first['msg']}") from None
    for shard in meta.shards:
        if not SHARD_NAME.fullmatch(shard.file):
            raise UserError(f"{path}: shard file name {shard.file!r} is not SPLIT_NNNNNN.bin")
    return meta


def check_compatible(meta: DataMeta, vocab_size: int, tokenizer: str, source: str) -> None:
    """Refuse data whose tokens mean something else to the model.

    `source` names the data dir in the message, e.g. "data/stories".
    """
    if meta.tokenizer != tokenizer:
        raise UserError(
            f"{source}: tokenized with tokenizer {meta.tokenizer!r}, but the model uses {tokenizer!r}"
        )
    if meta.tokenizer == "gpt2" and meta.ranks_sha256 != RANKS_SHA256:
        raise UserError(
            f"{source}: tokenized with different gpt2 ranks (sha256 {meta.ranks_sha256[:12]}…); re-run `gpt2 tokenize`"
        )
    if meta.vocab_size != vocab_size:
        raise UserError(
            f"{source}: token vocabulary has {meta.vocab_size} entries, but the model's vocab_size is {vocab_size}"
        )
