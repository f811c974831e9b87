"""An index of every n-gram in the training tokens, for memorization checks.

Each n-gram (n = 8, 16, 32 tokens) is reduced to a 64-bit hash; the hashes of
the training split are kept as one sorted, de-duplicated uint64 array per n,
and membership is a binary search (np.searchsorted). 50M training tokens make
three arrays of at most 400 MB each, built one n at a time in place and
memory-mapped for queries.

Hash: a tree of splitmix64 mixes. h1(t) = mix(t + 1); the hash of a 2m-gram
is mix(h_m(left) * C + h_m(right)). splitmix64's finaliser (Steele, Lea &
Flood 2014, "Fast splittable pseudorandom number generators") is a bijection
that scrambles every input bit, so unlike a plain polynomial hash mod 2^64
(broken by Thue–Morse strings) distinct n-grams collide only by chance:
with M distinct training n-grams, a query n-gram that is not in the training
data is reported as present with probability about M / 2^64 (< 3e-12 for
M = 50M). The tests compare against a brute-force scan.

N-grams that cross a document boundary (contain EOT) are indexed like any
other: training windows cross documents too, so the model sees them.

Cache: DATA_DIR/.ngram_index/<key>/n{8,16,32}.npy with index.json; the key
is a digest of the train shards' sha256 (from meta.json), the n's and the
hash version, so changed shards get a new index and old ones are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from gpt2cli.errors import UserError, environment_message
from gpt2cli.outputs import missing_dirs, remove_empty_dirs

INDEX_NS = (8, 16, 32)
HASH_VERSION = 1
CACHE_DIR_NAME = ".ngram_index"
CHUNK = 1 << 22  # positions hashed per chunk: keeps temporaries at ~32 MB each

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_COMBINE = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, odd

Progress = Callable[[str, int, int], None]


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place on a uint64 array (wraps mod 2^64)."""
    z ^= z >> np.uint64(30)
    z *= _M1
    z ^= z >> np.uint64(27)
    z *= _M2
    z ^= z >> np.uint64(31)
    return z


def _check_n(n: int) -> None:
    if n < 1 or n & (n - 1):
        raise ValueError(f"n-gram length must be a power of two, got {n}")


def ngram_hashes(tokens: np.ndarray, n: int) -> np.ndarray:
    """The hash of the n-gram starting at each position: len(tokens) - n + 1 uint64s."""
    _check_n(n)
    t = np.asarray(tokens)
    if len(t) < n:
        return np.empty(0, dtype=np.uint64)
    h = t.astype(np.uint64)
    h += np.uint64(1)
    _mix64(h)
    m = 1
    while m < n:
        nxt = h[:-m] * _COMBINE
        nxt += h[m:]
        h = _mix64(nxt)
        m *= 2
    return h


def sorted_unique_hashes(tokens: np.ndarray, n: int, progress: Progress | None = None) -> np.ndarray:
    """Sorted distinct n-gram hashes of `tokens`, built in one array of len - n + 1 slots.

    Hashing goes chunk by chunk into one preallocated array, which is sorted
    in place and compacted in place, so the peak is that array plus one chunk.
    """
    count = len(tokens) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    out = np.empty(count, dtype=np.uint64)
    for start in range(0, count, CHUNK):
        end = min(start + CHUNK, count)
        out[start:end] = ngram_hashes(np.asarray(tokens[start : end + n - 1]), n)
        if progress:
            progress(f"hashing {n}-grams", end, count)
    out.sort()
    # Drop duplicates in place: chunk by chunk, the write cursor never passes the read one.
    w = 0
    prev = None
    for start in range(0, count, CHUNK):
        block = out[start : start + CHUNK]
        keep = np.empty(len(block), dtype=bool)
        keep[0] = prev is None or block[0] != prev
        np.not_equal(block[1:], block[:-1], out=keep[1:])
        prev = block[-1]
        kept = block[keep]
        out[w : w + len(kept)] = kept
        w += len(kept)
    return out[:w]


class NgramIndex:
    """Sorted n-gram hashes per n; answers "is this n-gram in the training data?"."""

    def __init__(self, tables: dict[int, np.ndarray], n_tokens: int):
        self.tables = tables
        self.n_tokens = n_tokens

    @property
    def ns(self) -> tuple[int, ...]:
        return tuple(sorted(self.tables))

    @classmethod
    def build(cls, tokens: np.ndarray, ns: Sequence[int] = INDEX_NS) -> NgramIndex:
        """An in-memory index of `tokens` (no cache)."""
        for n in ns:
            _check_n(n)
        return cls({n: sorted_unique_hashes(tokens, n) for n in ns}, len(tokens))

    def contains(self, tokens: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
        """For each n-gram of `tokens` (by start position): is it in the index?"""
        table = self.tables[n]
        h = ngram_hashes(np.asarray(tokens, dtype=np.int64), n)
        if len(table) == 0 or len(h) == 0:
            return np.zeros(len(h), dtype=bool)
        pos = np.searchsorted(table, h)
        pos[pos == len(table)] = 0
        return table[pos] == h

    # -- the cache beside the shards -------------------------------------------
    @classmethod
    def open(cls, directory: Path) -> NgramIndex:
        info = json.loads((directory / "index.json").read_text(encoding="utf-8"))
        tables = {
            int(n): np.load(directory / f"n{n}.npy", mmap_mode="r", allow_pickle=False)
            for n in info["ns"]
        }
        return cls(tables, int(info["n_tokens"]))


class DamagedIndex(Exception):
    """A cached index that cannot be trusted; it is only a cache, so it is rebuilt."""


def open_checked(directory: Path, ns: Sequence[int], n_tokens: int) -> NgramIndex:
    """Open a cached index after checking it is the one asked for; DamagedIndex says why not."""
    try:
        info = json.loads((directory / "index.json").read_text(encoding="utf-8"))
        if not isinstance(info, dict) or info.get("version") != HASH_VERSION:
            raise DamagedIndex("index.json is not this version's")
        if sorted(info.get("ns", [])) != sorted(ns) or info.get("n_tokens") != n_tokens:
            raise DamagedIndex("index.json does not match the training split")
        index = NgramIndex.open(directory)
        for n, table in index.tables.items():
            if table.dtype != np.uint64 or table.ndim != 1 or len(table) > max(0, n_tokens - n + 1):
                raise DamagedIndex(f"n{n}.npy is not a table of {n}-gram hashes")
            # Sorted and distinct, checked on an even sample: a full pass would cost as much as a read.
            probe = np.asarray(table[:: max(1, len(table) // 4096)])
            if len(probe) > 1 and not bool(np.all(probe[1:] > probe[:-1])):
                raise DamagedIndex(f"n{n}.npy is not sorted")
        return index
    except DamagedIndex:
        raise
    except Exception as err:  # a truncated .npy, a missing file, bytes that are not JSON...
        if environment_message(err) is not None:  # no memory, too many files: not the cache's fault
            raise
        raise DamagedIndex(f"{type(err).__name__}: {err}".splitlines()[0][:200]) from None


def cache_key(shard_sha256s: Sequence[str], ns: Sequence[int] = INDEX_NS) -> str:
    """Digest of what the index depends on: the train shards, the n's, the hash."""
    blob = json.dumps({"version": HASH_VERSION, "ns": sorted(ns), "shards": list(shard_sha256s)})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)


def build_cached_index(
    tokens: np.ndarray,
    cache_root: Path,
    key: str,
    ns: Sequence[int] = INDEX_NS,
    progress: Progress | None = None,
) -> tuple[NgramIndex, dict]:
    """Open cache_root/key, or build it from `tokens` (one n at a time) and open it.

    Returns the index and a note: path (None when not cached), whether it was
    built, build seconds, and `rebuilt` (why) when a damaged copy under the
    key was thrown away and built again: it is only a cache. The directory is written under a temporary name and
    renamed, so a crash never leaves a half-built index under the real key;
    if another process finished the same key first, its copy is used. Other
    keys (stale indexes of earlier shards) are removed. Where the cache
    cannot be written (a read-only data dir), the index is built in memory.
    """
    for n in ns:
        _check_n(n)
    final = cache_root / key
    rebuilt: dict[str, str] = {}
    if final.exists() or final.is_symlink():
        try:
            return open_checked(final, ns, len(tokens)), {"path": str(final), "built": False, "seconds": 0.0}
        except DamagedIndex as why:
            rebuilt["rebuilt"] = f"{final}: damaged ({why}); rebuilt it"
            _remove(final)
    t0 = time.perf_counter()
    tmp = cache_root / f".tmp-{key}-{os.getpid()}"
    created = missing_dirs(cache_root)  # a failed first build takes the cache dir it made away again
    try:
        tmp.mkdir(parents=True, exist_ok=True)
    except OSError:
        remove_empty_dirs(created)
        index = NgramIndex.build(tokens, ns)
        return index, {"path": None, "built": True, "seconds": time.perf_counter() - t0, **rebuilt}
    try:
        for n in ns:
            table = sorted_unique_hashes(tokens, n, progress)
            if progress:
                progress(f"saving {n}-grams", 1, 1)
            _save_npy(tmp / f"n{n}.npy", table)
            del table
        info = {"version": HASH_VERSION, "ns": sorted(ns), "n_tokens": int(len(tokens))}
        (tmp / "index.json").write_text(json.dumps(info), encoding="utf-8")
        for old in cache_root.iterdir():
            if old.is_dir() and old.name != tmp.name and not old.name.startswith(".tmp-"):
                shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "index.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # a concurrent build of the same key won
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty_dirs(created)
        raise UserError(f"{cache_root}: could not write the n-gram index ({err.strerror or err})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty_dirs(created)
        raise
    seconds = time.perf_counter() - t0
    return NgramIndex.open(final), {"path": str(final), "built": True, "seconds": seconds, **rebuilt}


def _remove(path: Path) -> None:
    """Best effort: a cache entry that is a directory, a file or a dangling link."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
