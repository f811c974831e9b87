"""ShardReader, iter_documents, read_tokens, meta.json checks.

Shards here hold synthetic tokens (token i has a value derived from i), so a
window's content tells where it came from; the reference is plain slicing of
the concatenated split.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt2cli.data.meta import (
    DataMeta,
    ShardInfo,
    SplitSettings,
    check_compatible,
    read_meta,
    write_meta,
)
from gpt2cli.data.reader import ShardReader, iter_documents, read_tokens
from gpt2cli.errors import UserError
from gpt2cli.tokenizer import EOT_ID, RANKS_SHA256


def write_split_data(out: Path, splits: dict[str, list[np.ndarray]], vocab_size: int = 50257) -> Path:
    """Shards with the given tokens, and a meta.json describing them."""
    import hashlib

    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for split, arrays in splits.items():
        for k, arr in enumerate(arrays):
            name = f"{split}_{k:06d}.bin"
            data = np.asarray(arr, dtype="<u2").tobytes()
            (out / name).write_bytes(data)
            shards.append(ShardInfo(file=name, split=split, tokens=len(arr), sha256=hashlib.sha256(data).hexdigest()))
    meta = DataMeta(
        tokenizer="gpt2",
        ranks_sha256=RANKS_SHA256,
        vocab_size=vocab_size,
        eot_id=EOT_ID,
        shard_tokens=max(len(a) for arrays in splits.values() for a in arrays),
        documents={s: 1 for s in splits},
        tokens={s: sum(len(a) for a in arrays) for s, arrays in splits.items()},
        shards=shards,
        sources=[],
        split=SplitSettings(val_fraction=0.1, seed=0),
    )
    write_meta(out, meta)
    return out


@pytest.fixture
def data_dir(tmp_path) -> Path:
    # 3 train shards of uneven length; token value = position % 40000, so windows are identifiable.
    tokens = np.arange(2500) % 40000
    return write_split_data(tmp_path / "d", {"train": [tokens[:1000], tokens[1000:1700], tokens[1700:]], "val": [tokens[:300]]})


def test_batches_are_shifted_windows_of_the_split(data_dir):
    reader = ShardReader(data_dir, "train", batch_size=6, block_size=64, seed=1)
    assert reader.num_tokens == 2500
    everything = read_tokens(data_dir, "train").astype(np.int64)
    assert everything.tolist() == list(range(2500))
    crossed = 0
    for k in range(30):
        starts = reader.starts(k)
        x, y = reader.next_batch()
        assert x.dtype == torch.int64 and x.shape == (6, 64) and y.shape == (6, 64)
        for row, s in enumerate(starts):
            assert x[row].tolist() == everything[s : s + 64].tolist()
            assert y[row].tolist() == everything[s + 1 : s + 65].tolist()
            crossed += (s < 1000 < s + 65) or (s < 1700 < s + 65)
    assert crossed > 0  # windows across shard boundaries were drawn and are correct


def test_reproducible_from_seed_and_resumable(data_dir):
    a = ShardReader(data_dir, "train", 4, 32, seed=7)
    b = ShardReader(data_dir, "train", 4, 32, seed=7)
    c = ShardReader(data_dir, "train", 4, 32, seed=8)
    first = [a.next_batch()[0] for _ in range(5)]
    assert all(torch.equal(x, b.next_batch()[0]) for x in first)
    assert not torch.equal(first[0], c.next_batch()[0])
    state = a.state_dict()
    assert json.loads(json.dumps(state)) == state  # JSON-able
    after = [a.next_batch() for _ in range(4)]
    resumed = ShardReader(data_dir, "train", 4, 32, seed=999)
    resumed.load_state_dict(state)
    for x, y in after:
        rx, ry = resumed.next_batch()
        assert torch.equal(x, rx) and torch.equal(y, ry)


def test_world_size_splits_one_global_stream(data_dir):
    whole = ShardReader(data_dir, "train", batch_size=8, block_size=16, seed=3)
    ranks = [ShardReader(data_dir, "train", batch_size=4, block_size=16, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        x, _ = whole.next_batch()
        parts = [r.next_batch()[0] for r in ranks]
        assert torch.equal(x, torch.cat(parts))
    # Resume the 2-rank run with one rank of batch 8: the same global stream continues.
    single = ShardReader(data_dir, "train", batch_size=8, block_size=16, seed=3)
    single.load_state_dict(ranks[0].state_dict())
    assert torch.equal(single.next_batch()[0], whole.next_batch()[0])


def test_every_window_start_is_reachable(tmp_path):
    out = write_split_data(tmp_path / "d", {"train": [np.arange(10)], "val": [np.arange(10)]})
    reader = ShardReader(out, "train", batch_size=64, block_size=8, seed=0)
    starts = np.concatenate([reader.starts(k) for k in range(5)])
    assert set(starts.tolist()) == {0, 1}  # N - T = 2 possible windows of T+1 = 9 tokens


def test_iter_documents_splits_at_eot_across_shards(tmp_path):
    docs = [[1, 2, 3], [4], [5, 6, 7, 8, 9], [], [10, 11]]
    stream = [t for d in docs for t in (*d, EOT_ID)]
    out = write_split_data(tmp_path / "d", {"train": [stream[:3], stream[3:8], stream[8:]], "val": [stream]})
    got = [d.tolist() for d in iter_documents(out, "train", chunk_tokens=2)]
    assert got == docs


def test_open_validates_shards(tmp_path):
    good = np.arange(100)
    out = write_split_data(tmp_path / "odd", {"train": [good], "val": [good]})
    with open(out / "train_000000.bin", "ab") as fh:
        fh.write(b"\x00")
    with pytest.raises(UserError, match=r"train_000000.bin: odd byte length, not uint16 tokens"):
        ShardReader(out, "train", 2, 8, seed=0)

    out = write_split_data(tmp_path / "short", {"train": [good], "val": [good]})
    (out / "train_000000.bin").write_bytes(good[:50].astype("<u2").tobytes())
    with pytest.raises(UserError, match=r"holds 50 tokens but meta.json says 100"):
        ShardReader(out, "train", 2, 8, seed=0)

    bad = good.copy()
    bad[77] = 60000
    out = write_split_data(tmp_path / "ids", {"train": [good, bad], "val": [good]})
    with pytest.raises(UserError, match=r"train_000001.bin: token id 60000 at position 77 is outside the vocabulary \(size 50257\)"):
        ShardReader(out, "train", 2, 8, seed=0)

    out = write_split_data(tmp_path / "small", {"train": [good[:20]], "val": [good]})
    with pytest.raises(UserError, match=r"the train split has 20 tokens, fewer than block size \+ 1 = 21"):
        ShardReader(out, "train", 2, 20, seed=0)
    assert ShardReader(out, "train", 2, 19, seed=0).num_tokens == 20

    out = write_split_data(tmp_path / "noval", {"train": [good]})
    with pytest.raises(UserError, match=r"no 'val' shards"):
        ShardReader(out, "val", 2, 8, seed=0)


def test_read_meta_errors(tmp_path):
    with pytest.raises(UserError, match=r"nowhere: no such data directory"):
        read_meta(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty/meta.json: missing"):
        read_meta(tmp_path / "empty")
    out = write_split_data(tmp_path / "d", {"train": [np.arange(50)], "val": [np.arange(50)]})
    (out / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match=r"d/meta.json: not valid JSON$"):
        read_meta(out)
    (out / "meta.json").write_text(json.dumps({"format": "something-else/9"}))
    with pytest.raises(UserError, match=r"unknown format 'something-else/9'"):
        read_meta(out)
    (out / "meta.json").write_text(json.dumps({"format": "gpt2cli-data/1", "tokenizer": "gpt2"}))
    with pytest.raises(UserError, match=r"d/meta.json: ranks_sha256: Field required"):
        read_meta(out)


def test_check_compatible(tmp_path):
    out = write_split_data(tmp_path / "d", {"train": [np.arange(50)], "val": [np.arange(50)]})
    meta = read_meta(out)
    check_compatible(meta, 50257, "gpt2", "data/d")
    with pytest.raises(UserError, match=r"^data/d: tokenized with tokenizer 'gpt2', but the model uses 'llama'$"):
        check_compatible(meta, 50257, "llama", "data/d")
    with pytest.raises(UserError, match=r"^data/d: token vocabulary has 50257 entries, but the model's vocab_size is 256$"):
        check_compatible(meta, 256, "gpt2", "data/d")
    other = meta.model_copy(update={"ranks_sha256": "0" * 64})
    with pytest.raises(UserError, match=r"different gpt2 ranks"):
        check_compatible(other, 50257, "gpt2", "data/d")


def test_reads_what_tokenize_wrote(tmp_path):
    """End to end: tokenized stories decode back from reader windows."""
    from gpt2cli.data.shards import TokenizeOptions, run_tokenize
    from gpt2cli.tokenizer import get_tokenizer

    out = tmp_path / "stories"
    run_tokenize(TokenizeOptions(out_dir=out, builtin_stories=100_000, workers=1, shard_tokens=5000))
    reader = ShardReader(out, "train", batch_size=2, block_size=32, seed=0)
    x, y = reader.next_batch()
    assert torch.equal(x[:, 1:], y[:, :-1])
    text = (out / "source" / "stories.txt").read_text(encoding="utf-8")
    enc = get_tokenizer()
    docs = list(iter_documents(out, "train"))
    assert len(docs) == read_meta(out).documents["train"]
    assert all(enc.decode(d.tolist()) in text for d in docs[:20])
