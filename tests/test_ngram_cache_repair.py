"""A damaged n-gram cache under DATA_DIR/.ngram_index is only a cache: rebuilt, with a note saying why."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpt2cli.analysis.ngram_index import INDEX_NS, NgramIndex, build_cached_index


def _truncate(d):
    raw = (d / "n16.npy").read_bytes()
    (d / "n16.npy").write_bytes(raw[: len(raw) // 2])


def _garbage_json(d):
    (d / "index.json").write_bytes(b"\xff\x00{")


def _not_an_object(d):
    (d / "index.json").write_text("[1, 2]", encoding="utf-8")


def _missing_table(d):
    (d / "n8.npy").unlink()


def _missing_index_json(d):
    (d / "index.json").unlink()


def _unsorted(d):
    table = np.load(d / "n32.npy")
    np.save(d / "n32.npy", table[::-1].copy(), allow_pickle=False)


def _wrong_dtype(d):
    np.save(d / "n8.npy", np.arange(10, dtype=np.float32), allow_pickle=False)


def _pickled_objects(d):
    np.save(d / "n8.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)


def _other_token_count(d):
    info = json.loads((d / "index.json").read_text(encoding="utf-8"))
    (d / "index.json").write_text(json.dumps({**info, "n_tokens": 7}), encoding="utf-8")


def _a_file_instead(d):
    import shutil

    shutil.rmtree(d)
    d.write_text("not an index")


DAMAGE = [_truncate, _garbage_json, _not_an_object, _missing_table, _missing_index_json, _unsorted, _wrong_dtype,
          _pickled_objects, _other_token_count, _a_file_instead]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__.strip("_") for d in DAMAGE])
def test_a_damaged_cache_is_rebuilt_with_a_note(damage, tmp_path):
    tokens = np.random.default_rng(0).integers(0, 300, size=5000).astype(np.uint16)
    root = tmp_path / ".ngram_index"
    index, info = build_cached_index(tokens, root, "k1")
    assert info["built"] and "rebuilt" not in info
    index, info = build_cached_index(tokens, root, "k1")
    assert not info["built"] and "rebuilt" not in info  # a sound cache is reused as it is

    damage(root / "k1")
    index, info = build_cached_index(tokens, root, "k1")
    assert info["built"] and info["rebuilt"].startswith(f"{root / 'k1'}: damaged (")
    reference = NgramIndex.build(tokens, INDEX_NS)
    for n in INDEX_NS:
        assert np.array_equal(index.tables[n], reference.tables[n])
    _, info = build_cached_index(tokens, root, "k1")
    assert not info["built"] and "rebuilt" not in info
    assert sorted(p.name for p in root.iterdir()) == ["k1"]
