"""The tokenize pipeline: exact round trips, parallel determinism, the split rule.

References: tiktoken's own encode_ordinary on each whole document, and a
pure-Python splitmix64 for the val assignment.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest

from gpt2cli.data import encode, sources
from gpt2cli.data.encode import encode_piece
from gpt2cli.data.meta import read_meta
from gpt2cli.data.reader import iter_documents
from gpt2cli.data.shards import (
    TokenizeOptions,
    TokenizeSummary,
    ordered_map,
    run_tokenize,
    tokenize_corpus,
)
from gpt2cli.data.sources import Piece, safe_cut
from gpt2cli.data.split import SplitRouter, val_mask
from gpt2cli.data.stories import iter_stories
from gpt2cli.tokenizer import EOT_ID, EOT_TEXT, get_tokenizer

SNIPPETS = (
    "Café, naïve, résumé, Ærøskøbing, São Paulo, Zürich.",
    "日本語のテキストと中文字符，混在しています。",
    "Emoji: 🎉👍🏽 and a family 👨‍👩‍👧 walked by 🐶.",
    "Tabs\tand  double  spaces,   and 'quotes' it's we'll they've.",
    "Numbers 12345 and 3.14159, and <|endoftext|> inside a line is just text.",
    "Ünïcödé spaces:\u00a0no-break,\u3000ideographic, and\u2028a line separator.",
)


def make_documents(n: int, seed: int, giant_every: int = 0) -> list[str]:
    """Stories mixed with accents, CJK, emoji, odd whitespace; some docs very long."""
    rng = random.Random(seed)
    stories = iter_stories(seed)
    docs = []
    for i in range(n):
        parts = [next(stories)]
        for _ in range(rng.randrange(3)):
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(SNIPPETS))
        doc = rng.choice(("\n", " ", "\n\n", "")).join(parts)
        if rng.random() < 0.1:
            doc = "  " + doc + "  "  # leading/trailing spaces are kept
        if giant_every and i % giant_every == 0:
            # A document far longer than a piece: it must be cut inside and stay exact.
            doc = "\n".join(next(stories) + " " + rng.choice(SNIPPETS) for _ in range(60))
        docs.append(doc)
    return docs


def write_eot_text(path: Path, docs: list[str]) -> None:
    text = "".join(f"{d}\n{EOT_TEXT}\n" for d in docs)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(text.encode("utf-8"))


def write_jsonl(path: Path, docs: list[str]) -> None:
    lines = "".join(json.dumps({"id": i, "text": d}, ensure_ascii=i % 2 == 0) + "\n" for i, d in enumerate(docs))
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(lines.encode("utf-8"))


def splitmix64_reference(x: int) -> int:
    """splitmix64 with Python ints (Steele et al. 2014), independent of the numpy version."""
    mask = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def expected_val(n: int, seed: int, fraction: float) -> set[int]:
    key = splitmix64_reference(seed)
    val = {i for i in range(n) if (splitmix64_reference(i ^ key) >> 11) / 2**53 < fraction}
    if n >= 2 and not val:
        val = {n - 1}
    elif n >= 2 and len(val) == n:
        val.discard(n - 1)
    elif n == 1:
        val = set()
    return val


def decoded_split(out: Path, split: str) -> bytes:
    enc = get_tokenizer()
    meta = read_meta(out)
    tokens = [np.fromfile(out / s.file, dtype="<u2") for s in meta.split_shards(split)]
    return enc.decode_bytes(np.concatenate(tokens).tolist()) if tokens else b""


def assert_round_trip(out: Path, docs: list[str], seed: int, fraction: float) -> None:
    """Decoded shards == the input documents of each split, each followed by <|endoftext|>."""
    val = expected_val(len(docs), seed, fraction)
    for split, keep in (("train", lambda i: i not in val), ("val", lambda i: i in val)):
        want = "".join(d + EOT_TEXT for i, d in enumerate(docs) if keep(i)).encode("utf-8")
        assert decoded_split(out, split) == want, split
    meta = read_meta(out)
    assert meta.documents == {"train": len(docs) - len(val), "val": len(val)}


@pytest.fixture
def small_pieces(monkeypatch):
    """Cut inputs into ~4 KB pieces so a small corpus crosses many piece boundaries."""
    monkeypatch.setattr(sources, "READ_BLOCK", 2048)
    monkeypatch.setattr(sources, "PIECE_BYTES", 4096)
    monkeypatch.setattr(sources, "MAX_PIECE_BYTES", 16384)


@pytest.mark.parametrize("name", ["corpus.txt", "corpus.jsonl", "corpus.txt.gz", "corpus.jsonl.gz"])
def test_round_trip_multi_megabyte(tmp_path, name):
    docs = make_documents(2600, seed=3, giant_every=500)
    path = tmp_path / name
    (write_jsonl if ".jsonl" in name else write_eot_text)(path, docs)
    assert sum(len(d.encode("utf-8")) for d in docs) > 2_000_000
    out = tmp_path / "out"
    summary = run_tokenize(TokenizeOptions(inputs=[path], out_dir=out, workers=2, val_fraction=0.02, seed=5))
    assert_round_trip(out, docs, seed=5, fraction=0.02)
    assert summary.replaced_utf8_errors == 0
    # Every token agrees with tiktoken on the whole document.
    enc = get_tokenizer()
    val = expected_val(len(docs), 5, 0.02)
    want = []
    for i, d in enumerate(docs):
        if i in val:
            want += enc.encode_ordinary(d) + [EOT_ID]
    got = np.concatenate([np.fromfile(out / s.file, dtype="<u2") for s in read_meta(out).split_shards("val")])
    assert got.tolist() == want


@pytest.mark.parametrize("separator", ["eot-line", "blank-line"])
def test_round_trip_with_cuts_inside_documents(tmp_path, small_pieces, separator):
    """Giant documents cut at many safe points still give tiktoken's exact tokens."""
    docs = make_documents(120, seed=11, giant_every=7)
    path = tmp_path / "c.txt"
    if separator == "eot-line":
        write_eot_text(path, docs)
    else:
        docs = [re.sub(r"\n\s*\n", "\n", d).strip() for d in docs]  # no blank lines inside
        path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    pieces = list(sources.SourceReader(sources.expand_inputs([path])[0], 0, separator).pieces())
    assert sum(p.open_end for p in pieces) >= 20  # the cuts inside documents are exercised
    out = tmp_path / "out"
    opts = TokenizeOptions(
        inputs=[path], out_dir=out, workers=2, val_fraction=0.1, seed=1, shard_tokens=5000, doc_separator=separator
    )
    run_tokenize(opts)
    assert_round_trip(out, docs, seed=1, fraction=0.1)
    enc = get_tokenizer()
    val = expected_val(len(docs), 1, 0.1)
    train_docs = [d for i, d in enumerate(docs) if i not in val]
    got = list(iter_documents(out, "train"))
    assert len(got) == len(train_docs)
    for tokens, doc in zip(got, train_docs, strict=True):
        assert tokens.tolist() == enc.encode_ordinary(doc)


def test_workers_give_identical_bytes(tmp_path, small_pieces):
    docs = make_documents(150, seed=2, giant_every=40)
    path = tmp_path / "c.jsonl"
    write_jsonl(path, docs)
    outs = []
    for workers in (1, 2, 3):
        out = tmp_path / f"out{workers}"
        run_tokenize(TokenizeOptions(inputs=[path], out_dir=out, workers=workers, shard_tokens=3000, seed=4))
        outs.append(out)
    files = sorted(p.name for p in outs[0].iterdir())
    assert len([f for f in files if f.endswith(".bin")]) > 5
    for out in outs[1:]:
        assert sorted(p.name for p in out.iterdir()) == files
        for name in files:
            assert (out / name).read_bytes() == (outs[0] / name).read_bytes(), name


def test_blank_line_separator(tmp_path):
    docs = ["First doc,\nline two.", "  Second doc has leading spaces", "Third 日本 🎉"]
    text = "\n\n\n" + "\n\n".join(docs[:2]) + "\n \t\n\n" + docs[2] + "\n\n  \n"
    path = tmp_path / "c.txt"
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    run_tokenize(TokenizeOptions(inputs=[path], out_dir=out, workers=1, doc_separator="blank-line"))
    assert_round_trip(out, docs, seed=0, fraction=0.005)


def test_eot_line_rules(tmp_path):
    """Only a line that is exactly <|endoftext|> separates; CRLF works; empty docs are skipped."""
    text = (
        "\ufeffOne\r\n<|endoftext|>\r\n"  # BOM dropped, CRLF line breaks
        "Two <|endoftext|> stays text\n<|endoftext|>\n"
        "<|endoftext|>\n"  # an empty document: no document at all
        "   \n<|endoftext|>\n"  # whitespace only: skipped and counted
        " <|endoftext|>\nThree, no final newline"
    )
    path = tmp_path / "c.txt"
    path.write_bytes(text.encode("utf-8"))
    out = tmp_path / "out"
    summary = run_tokenize(TokenizeOptions(inputs=[path], out_dir=out, workers=1))
    docs = ["One", "Two <|endoftext|> stays text", " <|endoftext|>\nThree, no final newline"]
    assert_round_trip(out, docs, seed=0, fraction=0.005)
    assert summary.skipped_empty_documents == 1


def test_plain_split_cuts_like_the_separator_regex(monkeypatch):
    """The str.split fast path for eot-line text gives the regex path's parts on every text it takes."""
    rng = random.Random(3)
    alphabet = ["a", "b ", "\n", "\n", EOT_TEXT, "\n" + EOT_TEXT + "\n", "\r", " ", "<|endoftext", "|>"]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 14))) for _ in range(4000)]
    cases = [
        (text, Piece(0, "t", "text", 0, 1, text.encode(), continues, False, file_end))
        for text in texts
        for continues, file_end in ((False, False), (True, True))
    ]
    fast = [encode._text_parts(text, piece, "eot-line") for text, piece in cases]
    taken = [encode._plain_eot_lines(t) for t in texts]
    cut_fast = sum(len(parts) > 1 for parts, fast_path in zip(fast[::2], taken, strict=True) if fast_path)
    monkeypatch.setattr(encode, "_plain_eot_lines", lambda text: False)
    for (text, piece), parts in zip(cases, fast, strict=True):
        assert encode._text_parts(text, piece, "eot-line") == parts, repr(text)
    # Both paths were exercised, and separators were cut on the fast one.
    assert 1000 < sum(taken) < len(texts)
    assert cut_fast > 300


def test_directory_inputs_in_sorted_order(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "b").mkdir(parents=True)
    write_eot_text(corpus / "b" / "2.txt", ["doc two"])
    write_jsonl(corpus / "a.jsonl", ["doc one"])
    with gzip.open(corpus / "c.txt.gz", "wb") as fh:
        fh.write(b"doc three\n<|endoftext|>\ndoc four")
    (corpus / "notes.md").write_text("not a corpus file")
    (corpus / ".hidden.txt").write_text("hidden files are skipped")
    out = tmp_path / "out"
    run_tokenize(TokenizeOptions(inputs=[corpus], out_dir=out, workers=1, val_fraction=0.3))
    docs = ["doc one", "doc two", "doc three", "doc four"]
    assert_round_trip(out, docs, seed=0, fraction=0.3)
    meta = read_meta(out)
    assert [s.path for s in meta.sources] == [str(corpus / "a.jsonl"), str(corpus / "b" / "2.txt"), str(corpus / "c.txt.gz")]
    assert [s.documents for s in meta.sources] == [1, 1, 2]
    import hashlib

    for s in meta.sources:
        raw = Path(s.path).read_bytes()
        assert s.bytes == len(raw) and s.sha256 == hashlib.sha256(raw).hexdigest()
    for shard in meta.shards:
        raw = (out / shard.file).read_bytes()
        assert shard.tokens * 2 == len(raw) and shard.sha256 == hashlib.sha256(raw).hexdigest()


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"caf\xe9 au lait\n<|endoftext|>\nok \xef\xbf\xbd kept\n<|endoftext|>\nbad \xff\xfe end")
    out = tmp_path / "out"
    summary = run_tokenize(TokenizeOptions(inputs=[path], out_dir=out, workers=1))
    assert summary.replaced_utf8_errors == 3  # \xe9, \xff, \xfe; the genuine U+FFFD is not counted
    assert read_meta(out).replaced_utf8_errors == 3
    docs = ["caf\ufffd au lait", "ok \ufffd kept", "bad \ufffd\ufffd end"]
    assert_round_trip(out, docs, seed=0, fraction=0.005)


def test_split_rule_matches_reference():
    got = val_mask(seed=12345, first_index=0, count=5000, val_fraction=0.05)
    key = splitmix64_reference(12345)
    want = [(splitmix64_reference(i ^ key) >> 11) / 2**53 < 0.05 for i in range(5000)]
    assert got.tolist() == want
    # Chunked calls agree with one call (the pipeline asks piece by piece).
    parts = [val_mask(12345, a, 1000, 0.05) for a in range(0, 5000, 1000)]
    assert np.concatenate(parts).tolist() == want
    frac = val_mask(7, 0, 200_000, 0.1).mean()
    assert abs(frac - 0.1) < 0.004


@pytest.mark.parametrize(
    ("n", "fraction"), [(1, 0.5), (2, 0.001), (2, 0.999), (3, 0.999), (40, 0.001), (300, 0.05)]
)
def test_both_splits_non_empty(n, fraction):
    """At least one val document whenever there are two or more, and at least one train one."""
    rng = np.random.default_rng(n)
    lengths = rng.integers(1, 30, size=n)
    written = {"train": [], "val": []}
    router = SplitRouter(9, fraction, lambda s, t: written[s].append(t.copy()), Path("/tmp") / f".held-{n}.tmp")
    # Feed documents in uneven pieces, some cut inside a document.
    tokens = np.concatenate([np.full(k, i, dtype="<u2") for i, k in enumerate(lengths)])
    doc = 0
    while doc < n:
        take = int(rng.integers(1, 5))
        chunk = lengths[doc : doc + take]
        router.add(np.concatenate([np.full(k, doc + j, dtype="<u2") for j, k in enumerate(chunk)]), chunk, False, False)
        doc += len(chunk)
    router.finish()
    val = expected_val(n, 9, fraction)
    for split, keep in (("train", lambda i: i not in val), ("val", lambda i: i in val)):
        got = np.concatenate(written[split]) if written[split] else np.empty(0, "<u2")
        want = tokens[np.isin(tokens, [i for i in range(n) if keep(i)])]
        assert got.tolist() == want.tolist(), split
    assert router.documents == {"train": n - len(val), "val": len(val)}


def test_router_stitches_documents_across_pieces(tmp_path):
    """A document split over several pieces (continues/open_end) lands whole in one split."""
    written = {"train": [], "val": []}
    router = SplitRouter(0, 0.5, lambda s, t: written[s].append(t.copy()), tmp_path / "held")
    arr = lambda *v: np.array(v, dtype="<u2")  # noqa: E731
    # doc0 = [1,2 | 3 | 4,EOT], doc1 = [5,EOT], doc2 = [6 | 7,EOT]
    router.add(arr(1, 2), np.array([2]), False, True)
    router.add(arr(3), np.array([1]), True, True)
    router.add(arr(4, EOT_ID, 5, EOT_ID, 6), np.array([2, 2, 1]), True, True)
    router.add(arr(7, EOT_ID), np.array([2]), True, False)
    router.finish()
    docs = [[1, 2, 3, 4, EOT_ID], [5, EOT_ID], [6, 7, EOT_ID]]
    val = expected_val(3, 0, 0.5)
    for split in ("train", "val"):
        want = [t for i, d in enumerate(docs) if (i in val) == (split == "val") for t in d]
        got = np.concatenate(written[split]).tolist() if written[split] else []
        assert got == want


TRICKY = (
    "a", "Bob", "z", " ", "  ", "\n", "\n\n", "\t", "'s", "'", "'ll", "1", "23", ",", ".", "!?",
    "<|endoftext|>", "é", "日本", "語", "🎉", "👍🏽", "\u00a0", "\u3000", "\r\n", "\u2028", "\x1c", "\x85",
    "\u0301", "Ω", "x", " <", "\n<", "ab cd", "\x0b",
)


def test_safe_cut_points_keep_tokens_exact():
    """Every cut safe_cut may choose splits between pre-tokens: parts encode like the whole."""
    enc = get_tokenizer()
    # The check has teeth: cutting after the space, or inside a word, changes the tokens.
    for a, b in (("x ", "y"), ("hello wor", "ld"), ("a  ", "b")):
        assert enc.encode_ordinary(a) + enc.encode_ordinary(b) != enc.encode_ordinary(a + b)
    rng = random.Random(0)
    checked = 0
    for _ in range(1500):
        text = "".join(rng.choice(TRICKY) for _ in range(rng.randrange(5, 40)))
        buf = text.encode("utf-8")
        whole = enc.encode_ordinary(text)
        hi = len(buf) - 1
        while hi >= 1:
            cut = safe_cut(buf, 1, hi)
            if cut is None:
                break
            a, b = buf[:cut].decode("utf-8"), buf[cut:].decode("utf-8")
            assert enc.encode_ordinary(a) + enc.encode_ordinary(b) == whole, (a, b)
            checked += 1
            hi = cut - 1
    assert checked > 1000


def test_whitespace_test_covers_the_pretokenizer():
    """Every Unicode White_Space character (the regex's \\s) counts as space for safe_cut."""
    white_space = [*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
    assert all(chr(c).isspace() for c in white_space)


def test_encode_piece_reports_bad_json_line():
    data = b'{"text": "fine"}\n{"text": broken}\n'
    piece = Piece(0, "c.jsonl", "jsonl", 0, 10, data, False, False, True)
    assert encode_piece(piece).error == "c.jsonl line 11: not valid JSON"
    piece = Piece(0, "c.jsonl", "jsonl", 0, 1, b'{"body": "x"}\n', False, False, True)
    assert "no 'text' field" in encode_piece(piece).error
    assert encode_piece(piece, field_name="body").error is None
    piece = Piece(0, "c.jsonl", "jsonl", 0, 1, b'{"text": 3}\n', False, False, True)
    assert "is int, not a string" in encode_piece(piece).error
    piece = Piece(0, "c.jsonl", "jsonl", 0, 4, b'["text"]\n', False, False, True)
    assert encode_piece(piece).error == "c.jsonl line 4: not a JSON object (expected a record with a 'text' field)"


def test_lone_surrogates_from_json_are_replaced(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a \\ud800 b"}\n{"text": "fine"}\n')
    out = tmp_path / "out"
    summary = run_tokenize(TokenizeOptions(inputs=[path], out_dir=out, workers=1))
    assert summary.replaced_utf8_errors == 1
    assert_round_trip(out, ["a \ufffd b", "fine"], seed=0, fraction=0.005)


def test_builtin_stories_are_tokenized_and_described(tmp_path):
    out = tmp_path / "stories"
    summary = run_tokenize(TokenizeOptions(out_dir=out, builtin_stories=200_000, workers=1, seed=3))
    meta = read_meta(out)
    assert meta.builtin_stories == {"bytes": summary.bytes_in, "seed": 3}
    assert meta.sources[0].path == "source/stories.txt"
    source = out / "source" / "stories.txt"
    assert meta.sources[0].bytes == source.stat().st_size >= 200_000
    docs = source.read_text(encoding="utf-8").split(f"\n{EOT_TEXT}\n")[:-1]
    assert_round_trip(out, docs, seed=3, fraction=0.005)


def test_ordered_map_keeps_order_and_bounds_work_in_flight():
    """Memory stays flat: at most `in_flight` pieces are read ahead of the results."""
    pulled = 0

    def items():
        nonlocal pulled
        for i in range(60):
            pulled += 1
            yield -i

    results = []
    for value in ordered_map(abs, items(), workers=2, in_flight=4):
        results.append(value)
        assert pulled <= len(results) + 4
    assert results == list(range(60))


def test_progress_events_then_summary(tmp_path, small_pieces):
    path = tmp_path / "c.txt"
    write_eot_text(path, make_documents(60, seed=1))
    events = list(tokenize_corpus(TokenizeOptions(inputs=[path], out_dir=tmp_path / "out", workers=1)))
    *progress, summary = events
    assert isinstance(summary, TokenizeSummary) and len(progress) > 10
    done = [e.done_bytes for e in progress]
    assert done == sorted(done) and done[-1] == path.stat().st_size == progress[-1].total_bytes
    assert progress[-1].tokens == sum(summary.tokens.values())
