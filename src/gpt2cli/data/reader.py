"""Reading shards back: random training windows, documents, whole splits.

`ShardReader` memory-maps every shard of a split and draws (B, T+1) windows
uniformly at random from the split's tokens as one stream (a window may run
across a shard boundary, as documents do). Batch k of the global stream is a
pure function of (seed, k): its batch_size * world_size window starts come
from `np.random.default_rng([seed, k])` and rank r takes rows r*B..(r+1)*B.
So the position to save is just k, and a run resumed with another world size
continues the same global stream.

Shards are opened on demand and at most `MAX_OPEN_SHARDS` stay mapped at a
time (each memory map holds a file descriptor): a data dir of thousands of
shards must not run into the open-files limit.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from gpt2cli.data.meta import DataMeta, read_meta
from gpt2cli.errors import UserError
from gpt2cli.tokenizer import EOT_ID

_SCAN_TOKENS = 1 << 24  # check token ids 32 MB at a time
MAX_OPEN_SHARDS = 32  # memory maps kept open per split; well under any open-files limit


def _map(path: Path, tokens: int) -> np.ndarray:
    if tokens == 0:  # mmap refuses an empty file
        return np.empty(0, dtype="<u2")
    return np.memmap(path, dtype="<u2", mode="r")


class Shards:
    """A split's shards as a sequence of token arrays, each mapped when first used.

    The least recently used map is dropped once more than `max_open` are open;
    a slice a caller still holds keeps its own map alive until it is let go.
    """

    def __init__(self, paths: list[Path], lengths: list[int], max_open: int = MAX_OPEN_SHARDS) -> None:
        self.paths = paths
        self.lengths = lengths
        self.max_open = max_open
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, k: int) -> np.ndarray:
        if k < 0:
            k += len(self.paths)
        if not 0 <= k < len(self.paths):
            raise IndexError(k)
        shard = self._maps.get(k)
        if shard is None:
            shard = _map(self.paths[k], self.lengths[k])
            self._maps[k] = shard
            if len(self._maps) > self.max_open:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(k)
        return shard

    def __iter__(self) -> Iterator[np.ndarray]:
        # One at a time, not kept: a pass over every shard holds one file open.
        for k in range(len(self.paths)):
            yield self._maps[k] if k in self._maps else _map(self.paths[k], self.lengths[k])


def _open_shards(data_dir: Path, meta: DataMeta, split: str) -> Shards:
    """The split's shards, each checked against meta.json and for ids past the vocabulary
    (which would otherwise surface as an IndexError deep inside the model)."""
    shards = meta.split_shards(split)
    if not shards:
        raise UserError(f"{data_dir}: no {split!r} shards in meta.json (re-run `gpt2 tokenize` with more documents)")
    paths = []
    for info in shards:
        path = data_dir / info.file
        if not path.is_file():
            raise UserError(f"{path}: missing (listed in {data_dir}/meta.json)")
        size = path.stat().st_size
        if size % 2:
            raise UserError(f"{path}: odd byte length, not uint16 tokens")
        if size // 2 != info.tokens:
            raise UserError(f"{path}: holds {size // 2} tokens but meta.json says {info.tokens} (truncated or replaced?)")
        paths.append(path)
    maps = Shards(paths, [info.tokens for info in shards])
    for path, tokens in zip(paths, maps, strict=True):  # one map open at a time
        _check_ids(path, tokens, meta.vocab_size)
    return maps


def _check_ids(path: Path, tokens: np.ndarray, vocab_size: int) -> None:
    for start in range(0, len(tokens), _SCAN_TOKENS):
        chunk = tokens[start : start + _SCAN_TOKENS]
        top = int(chunk.max())
        if top >= vocab_size:
            at = start + int(np.argmax(chunk >= vocab_size))
            raise UserError(f"{path}: token id {top} at position {at} is outside the vocabulary (size {vocab_size})")


class ShardReader:
    """Random (B, T) input/target batches from one split, reproducible and resumable."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str,
        batch_size: int,
        block_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size <= 0 or block_size <= 0:
            raise UserError(f"batch size {batch_size} and block size {block_size} must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        self.data_dir = Path(data_dir)
        self.split = split
        self.batch_size = batch_size
        self.block_size = block_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.meta = read_meta(self.data_dir)
        self._shards = _open_shards(self.data_dir, self.meta, split)
        lengths = np.array(self._shards.lengths, dtype=np.int64)
        self._ends = np.cumsum(lengths)  # shard k covers [ends[k] - len_k, ends[k])
        self._starts = self._ends - lengths
        if self.num_tokens < block_size + 1:
            raise UserError(
                f"{self.data_dir}: the {split} split has {self.num_tokens} tokens, fewer than "
                f"block size + 1 = {block_size + 1}; use a smaller --block-size or more data"
            )
        self.batches_drawn = 0

    @property
    def num_tokens(self) -> int:
        return int(self._ends[-1])

    def _window(self, start: int) -> np.ndarray:
        """Tokens [start, start + T + 1) of the split, across shard boundaries if need be."""
        need = self.block_size + 1
        k = int(np.searchsorted(self._ends, start, side="right"))
        local = start - int(self._starts[k])
        shard = self._shards[k]
        if local + need <= len(shard):
            return shard[local : local + need]
        parts, got = [], 0
        while got < need:
            part = self._shards[k][local : local + need - got]
            parts.append(part)
            got += len(part)
            k, local = k + 1, 0
        return np.concatenate(parts)

    def starts(self, k: int) -> np.ndarray:
        """This rank's window starts for global batch k."""
        rng = np.random.default_rng([self.seed, k])
        # A window of T+1 tokens fits at starts 0 .. N-T-1.
        starts = rng.integers(0, self.num_tokens - self.block_size, size=self.batch_size * self.world_size)
        return starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def batch(self, k: int):
        """Global batch k (this rank's rows), without moving the reader's position."""
        import torch

        rows = np.stack([self._window(int(s)) for s in self.starts(k)]).astype(np.int64)
        x = torch.from_numpy(rows[:, :-1].copy())
        y = torch.from_numpy(rows[:, 1:].copy())
        return x, y

    def next_batch(self):
        """(x, y): int64 CPU tensors (B, T), y = x shifted left by one token."""
        x, y = self.batch(self.batches_drawn)
        self.batches_drawn += 1
        return x, y

    def state_dict(self) -> dict[str, int]:
        return {"batches_drawn": self.batches_drawn, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.batches_drawn = int(state["batches_drawn"])
        self.seed = int(state.get("seed", self.seed))


def _split_maps(data_dir: str | os.PathLike, split: str) -> Shards:
    """The split's shards, checked as ShardReader's are."""
    data_dir = Path(data_dir)
    return _open_shards(data_dir, read_meta(data_dir), split)


def read_tokens(data_dir: str | os.PathLike, split: str) -> np.ndarray:
    """All of a split's tokens: a memmap for one shard, else a concatenated copy."""
    maps = _split_maps(data_dir, split)
    if len(maps) == 1:
        return maps[0]
    out = np.empty(sum(maps.lengths), dtype="<u2")
    at = 0
    for shard in maps:  # one file open at a time
        out[at : at + len(shard)] = shard
        at += len(shard)
    return out


def iter_documents(data_dir: str | os.PathLike, split: str, chunk_tokens: int = 1 << 22) -> Iterator[np.ndarray]:
    """Each document's tokens in order (split at EOT, the EOT left out), streamed."""
    carry: list[np.ndarray] = []
    for tokens in _split_maps(data_dir, split):
        for start in range(0, len(tokens), chunk_tokens):
            chunk = np.asarray(tokens[start : start + chunk_tokens])
            ends = np.flatnonzero(chunk == EOT_ID)
            prev = 0
            for end in ends:
                carry.append(chunk[prev:end])
                yield np.concatenate(carry) if len(carry) > 1 else carry[0].copy()
                carry = []
                prev = end + 1
            if prev < len(chunk):
                carry.append(chunk[prev:])
    if carry:
        yield np.concatenate(carry)
