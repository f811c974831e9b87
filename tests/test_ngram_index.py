"""The n-gram index against a brute-force scan, planted n-grams, and its cache."""

from __future__ import annotations

import numpy as np
import pytest

from gpt2cli.analysis.memorization import longest_overlap
from gpt2cli.analysis.ngram_index import (
    NgramIndex,
    build_cached_index,
    cache_key,
    ngram_hashes,
    sorted_unique_hashes,
)


def brute_force_contains(train: np.ndarray, query: np.ndarray, n: int) -> np.ndarray:
    grams = {tuple(train[i : i + n]) for i in range(len(train) - n + 1)}
    return np.array([tuple(query[i : i + n]) in grams for i in range(len(query) - n + 1)], dtype=bool)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32])
def test_membership_agrees_with_brute_force(n):
    # Small alphabets give many hits and many misses for short n; symbol 3 never
    # occurs in training, so even 1-grams miss.
    rng = np.random.default_rng(n)
    train = rng.integers(0, 3, size=20_000).astype(np.uint16)
    query = rng.integers(0, 4, size=3_000).astype(np.uint16)
    # plant copies of training stretches so that long n have hits too
    for start, src in ((100, 5_000), (1_500, 12_345), (2_900, 19_000)):
        length = min(80, len(query) - start)
        query[start : start + length] = train[src : src + length]
    index = NgramIndex.build(train, ns=[n])
    got = index.contains(query, n)
    want = brute_force_contains(train, query, n)
    assert got.shape == want.shape
    assert np.array_equal(got, want)
    assert want.any() and not want.all()


def test_hashes_depend_only_on_the_ngram():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 50257, size=500).astype(np.uint16)
    h = ngram_hashes(t, 8)
    assert h.dtype == np.uint64 and len(h) == 493
    assert np.array_equal(ngram_hashes(t[37:45], 8), h[37:38])
    assert np.array_equal(ngram_hashes(t.astype(np.int64), 8), h)
    assert len(np.unique(h)) == len(h)  # random 8-grams: all distinct, no collision
    with pytest.raises(ValueError):
        ngram_hashes(t, 12)


def test_sorted_unique_hashes_across_chunks(monkeypatch):
    import gpt2cli.analysis.ngram_index as mod

    monkeypatch.setattr(mod, "CHUNK", 1000)  # force many chunks, duplicates across chunk edges
    rng = np.random.default_rng(3)
    t = rng.integers(0, 4, size=10_000).astype(np.uint16)
    got = sorted_unique_hashes(t, 4)
    assert np.array_equal(got, np.unique(ngram_hashes(t, 4)))
    assert len(got) == 4**4  # every 4-gram over 4 symbols occurs


def test_finds_planted_32gram_not_its_shuffled_copy():
    rng = np.random.default_rng(7)
    train = rng.integers(0, 50257, size=200_000).astype(np.uint16)
    planted = train[123_456 : 123_456 + 32].copy()
    index = NgramIndex.build(train)
    assert index.contains(planted, 32).tolist() == [True]
    shuffled = planted.copy()
    while np.array_equal(shuffled, planted):
        rng.shuffle(shuffled)
    assert index.contains(shuffled, 32).tolist() == [False]
    # The shuffled copy keeps the same tokens but loses the 8- and 16-grams too.
    assert not index.contains(shuffled, 16).any()


def brute_force_longest_common_span(train: np.ndarray, query: np.ndarray) -> int:
    """Longest common substring by dynamic programming over query positions."""
    best = 0
    prev = np.zeros(len(train) + 1, dtype=np.int32)
    for q in query:
        cur = np.zeros_like(prev)
        cur[1:] = np.where(train == q, prev[:-1] + 1, 0)
        best = max(best, int(cur.max()))
        prev = cur
    return best


def test_longest_overlap_agrees_with_brute_force():
    rng = np.random.default_rng(11)
    train = rng.integers(0, 50257, size=5_000).astype(np.uint16)
    index = NgramIndex.build(train)
    for length in (5, 8, 12, 16, 20, 31, 32, 47, 120):
        query = rng.integers(0, 50257, size=256).astype(np.uint16)
        src = int(rng.integers(0, len(train) - length))
        query[60 : 60 + length] = train[src : src + length]
        want = brute_force_longest_common_span(train, query)
        assert want == length
        got, start = longest_overlap(index, query)
        # below the smallest indexed n (8) the index reports 0 by design
        assert got == (want if want >= 8 else 0), length
        if got:
            assert start == 60


def test_cache_is_reused_and_invalidated(tmp_path):
    rng = np.random.default_rng(5)
    train = rng.integers(0, 500, size=3_000).astype(np.uint16)
    root = tmp_path / ".ngram_index"
    key = cache_key(["aa" * 32])
    index, info = build_cached_index(train, root, key)
    assert info["built"] and index.n_tokens == 3_000
    assert sorted(p.name for p in (root / key).iterdir()) == ["index.json", "n16.npy", "n32.npy", "n8.npy"]
    again, info = build_cached_index(train, root, key)
    assert not info["built"]
    assert isinstance(again.tables[32], np.memmap)
    for n in (8, 16, 32):
        assert np.array_equal(np.asarray(again.tables[n]), index.tables[n])
    q = train[1000:1300]
    assert again.contains(q, 32).all()
    # new shards -> new key: a fresh index, the stale one removed
    new_key = cache_key(["bb" * 32])
    assert new_key != key
    _, info = build_cached_index(train[:2_000], root, new_key)
    assert info["built"]
    assert [p.name for p in root.iterdir()] == [new_key]


def test_unwritable_cache_falls_back_to_memory(tmp_path):
    train = np.random.default_rng(6).integers(0, 500, size=2_000).astype(np.uint16)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")  # the cache's parent is a file: no directory can go there, even for root
    index, info = build_cached_index(train, blocker / ".ngram_index", cache_key(["cc" * 32]))
    assert info["path"] is None and info["built"]
    assert index.contains(train[:100], 32).all()
