"""Which documents go to val: a hash of (seed, document index), decided as they stream.

Document i goes to val when splitmix64(seed, i) / 2**64 < val_fraction.
splitmix64 (Steele, Lea & Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014) is a tiny, well-mixed hash, so the choice depends
on nothing but the seed and the document's position: the same corpus gives
the same split with any number of workers, and the val set is spread evenly
through the corpus.

The one exception keeps both splits non-empty: while either split is still
empty, the latest document is held back (spilled to a file, so a huge one
costs no memory) until the next one starts. If the stream ends with val
empty and two or more documents, the held document (the last one) goes to
val; if it ends with train empty, it goes to train.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's output function on uint64s (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def val_mask(seed: int, first_index: int, count: int, val_fraction: float) -> np.ndarray:
    """Bool per document first_index .. first_index+count-1: True for val."""
    with np.errstate(over="ignore"):
        key = splitmix64(np.array([seed & (2**64 - 1)], dtype=np.uint64))[0]
        idx = np.arange(first_index, first_index + count, dtype=np.uint64)
        h = splitmix64(idx ^ key)
    # The top 53 bits as a float in [0, 1), exactly as a double holds them.
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53) < val_fraction


class _HeldDocument:
    """A document's tokens kept aside in a file until its split is known."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fh = None
        self.tokens = 0

    def append(self, tokens: np.ndarray) -> None:
        if self.fh is None:
            self.fh = open(self.path, "w+b")  # noqa: SIM115 - lives across calls
        self.fh.write(tokens.tobytes())
        self.tokens += len(tokens)

    def drain(self, block: int = 1 << 22) -> Iterator[np.ndarray]:
        if self.fh is None:
            return
        self.fh.seek(0)
        while chunk := self.fh.read(block * 2):
            yield np.frombuffer(chunk, dtype="<u2")
        self.fh.seek(0)
        self.fh.truncate()
        self.tokens = 0

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        self.path.unlink(missing_ok=True)


class SplitRouter:
    """Routes each document's tokens to `write(split, tokens)` in stream order."""

    def __init__(self, seed: int, val_fraction: float, write: Callable[[str, np.ndarray], None], spill: Path) -> None:
        self.seed = seed
        self.val_fraction = val_fraction
        self.write = write
        self.documents = {"train": 0, "val": 0}
        self.n_started = 0  # documents begun (global index of the next one)
        self._open_split: str | None = None  # split of the document still being written
        self._held = _HeldDocument(spill)
        self._held_split: str | None = None  # its hashed split while held back

    @property
    def held_tokens(self) -> int:
        """Tokens kept aside, not yet written to either split."""
        return self._held.tokens

    @property
    def holding(self) -> bool:
        return self.documents["train"] == 0 or self.documents["val"] == 0

    def _release_held(self, split: str) -> None:
        for chunk in self._held.drain():
            self.write(split, chunk)
        self.documents[split] += 1
        self._held_split = None

    def add(self, tokens: np.ndarray, lengths: np.ndarray, continues: bool, open_end: bool) -> None:
        """One worker result: entries of `lengths` tokens; see EncodedPiece."""
        n_entries = len(lengths)
        if n_entries == 0:
            return
        n_new = n_entries - (1 if continues else 0)
        is_val = val_mask(self.seed, self.n_started, n_new, self.val_fraction)
        # The split of each entry: a continuation keeps its document's split.
        splits = np.empty(n_entries, dtype=bool)
        if continues:
            splits[0] = self._current_is_val()
            splits[1:] = is_val
        else:
            splits[:] = is_val
        if not self.holding and self._held_split is None:
            self._add_fast(tokens, lengths, splits, open_end, n_new)
            return
        ends = np.cumsum(lengths)
        starts = ends - lengths
        for k in range(n_entries):
            part = tokens[starts[k] : ends[k]]
            if k == 0 and continues:
                self._write_open(part)
            else:
                self._begin("val" if splits[k] else "train")
                self._write_open(part)
            if not (k == n_entries - 1 and open_end):
                self._end()

    def _current_is_val(self) -> bool:
        split = self._held_split if self._open_split == "held" else self._open_split
        return split == "val"

    def _begin(self, split: str) -> None:
        self.n_started += 1
        if self._held_split is not None:
            # The held document's split is final now that another one starts.
            self._release_held(self._held_split)
        if self.holding:
            self._held_split = split
            self._open_split = "held"
        else:
            self._open_split = split

    def _write_open(self, part: np.ndarray) -> None:
        if self._open_split == "held":
            self._held.append(part)
        else:
            self.write(self._open_split, part)

    def _end(self) -> None:
        if self._open_split != "held":
            self.documents[self._open_split] += 1
        self._open_split = None

    def _add_fast(self, tokens, lengths, splits, open_end: bool, n_new: int) -> None:
        """Both splits are non-empty: route whole token ranges at once.

        Val documents are rare, so the piece is written as a few runs of
        same-split documents (slices, no per-token mask).
        """
        change = np.flatnonzero(splits[1:] != splits[:-1]) + 1  # entries where a run starts
        bounds = np.concatenate(([0], np.cumsum(lengths)))
        run_starts = np.concatenate(([0], change))
        run_ends = np.concatenate((change, [len(splits)]))
        for a, b in zip(run_starts.tolist(), run_ends.tolist(), strict=True):
            self.write("val" if splits[a] else "train", tokens[bounds[a] : bounds[b]])
        self.n_started += n_new
        # A document is counted when it closes: every entry but an open last one.
        closed = splits[: len(splits) - 1] if open_end else splits
        closed_val = int(np.count_nonzero(closed))
        self.documents["val"] += closed_val
        self.documents["train"] += len(closed) - closed_val
        self._open_split = ("val" if splits[-1] else "train") if open_end else None

    def finish(self) -> None:
        """The stream ended: place the held document so both splits are non-empty."""
        if self._held_split is not None:
            total = self.documents["train"] + self.documents["val"] + 1
            split = self._held_split
            if total >= 2 and self.documents["val"] == 0:
                split = "val"
            elif self.documents["train"] == 0:
                split = "train"
            self._release_held(split)
        self._held.close()

    def close(self) -> None:
        self._held.close()
