"""Token shards on disk: SPLIT_NNNNNN.bin, raw little-endian uint16, no header.

The same layout as nanoGPT's train.bin, so `np.memmap(path, dtype=np.uint16)`
reads them. Each shard holds exactly `shard_tokens` tokens (the last one of a
split fewer); documents run on across shard boundaries. A shard is written
under a temporary name, fsynced and renamed only when complete, so a crash
never leaves a half-written file under a final name.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from gpt2cli.data.meta import ShardInfo, shard_name


class ShardWriter:
    """Appends one split's tokens, rolling over to a new shard every `shard_tokens`."""

    def __init__(self, out_dir: Path, split: str, shard_tokens: int) -> None:
        self.out_dir = out_dir
        self.split = split
        self.shard_tokens = shard_tokens
        self.shards: list[ShardInfo] = []
        self.tokens = 0
        self._fh = None
        self._tmp: Path | None = None
        self._in_shard = 0
        self._sha = hashlib.sha256()

    def _open(self) -> None:
        name = shard_name(self.split, len(self.shards))
        self._tmp = self.out_dir / f".{name}.tmp-{os.getpid()}"
        self._fh = open(self._tmp, "wb")  # noqa: SIM115 - closed in _close_shard/abort
        self._in_shard = 0
        self._sha = hashlib.sha256()

    def _close_shard(self) -> None:
        name = shard_name(self.split, len(self.shards))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        os.replace(self._tmp, self.out_dir / name)
        self._tmp = None
        self.shards.append(ShardInfo(file=name, split=self.split, tokens=self._in_shard, sha256=self._sha.hexdigest()))

    def write(self, tokens: np.ndarray) -> None:
        tokens = np.ascontiguousarray(tokens, dtype="<u2")
        while len(tokens):
            if self._fh is None:
                self._open()
            room = self.shard_tokens - self._in_shard
            part, tokens = tokens[:room], tokens[room:]
            data = part.data  # zero-copy view of the little-endian bytes
            self._fh.write(data)
            self._sha.update(data)
            self._in_shard += len(part)
            self.tokens += len(part)
            if self._in_shard == self.shard_tokens:
                self._close_shard()

    def close(self) -> list[ShardInfo]:
        """Finish the last (partial) shard; returns every shard written."""
        if self._fh is not None and self._in_shard:
            self._close_shard()
        return self.shards

    def abort(self) -> None:
        """Remove the temporary file and every shard this writer finished."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        for shard in self.shards:
            (self.out_dir / shard.file).unlink(missing_ok=True)
        self.shards = []
