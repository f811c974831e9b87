"""The built-in story corpus: deterministic, varied, well-formed; sizes parse."""

from __future__ import annotations

import itertools
import random
import re

import pytest

from gpt2cli.data.sizes import format_size
from gpt2cli.data.stories import iter_stories, make_story, parse_size, write_corpus
from gpt2cli.errors import UserError
from gpt2cli.tokenizer import EOT_TEXT


def first(seed: int, n: int) -> list[str]:
    return list(itertools.islice(iter_stories(seed), n))


def test_deterministic_from_seed_and_independent_of_global_rng():
    random.seed(1)
    a = first(5, 50)
    random.seed(2)
    assert first(5, 50) == a
    assert first(6, 50) != a
    assert make_story(random.Random(5)) == a[0]


def test_many_distinct_stories_with_the_promised_ingredients():
    stories = first(0, 12000)
    assert len(set(stories)) == len(stories)
    words = [len(s.split()) for s in stories]
    assert 120 <= sum(words) / len(words) <= 200
    assert min(words) >= 70 and max(words) <= 260
    in_range = sum(100 <= w <= 250 for w in words) / len(words)
    assert in_range > 0.85
    vocabulary = {w.lower() for s in stories for w in re.findall(r"[A-Za-z]+", s)}
    assert len(vocabulary) > 500
    with_dialogue = sum('"' in s for s in stories) / len(stories)
    assert with_dialogue > 0.95
    # feelings, animals, places and morals all show up
    text = "\n".join(stories[:2000])
    for word in ("sad", "happy", "scared", "proud", "dog", "bird", "park", "forest", "learned", "friend"):
        assert word in text, word
    for s in stories[:500]:
        assert EOT_TEXT not in s and "\n\n\n" not in s and s == s.strip()


def test_write_corpus_layout(tmp_path):
    path = tmp_path / "sub" / "stories.txt"
    n = write_corpus(path, 50_000, seed=3)
    raw = path.read_bytes()
    assert n == len(raw) and 50_000 <= n < 50_000 + 3000
    text = raw.decode("utf-8")
    assert text.endswith(f"\n{EOT_TEXT}\n")
    docs = text.split(f"\n{EOT_TEXT}\n")[:-1]
    assert docs == first(3, len(docs))
    assert [p.name for p in path.parent.iterdir()] == ["stories.txt"]  # no temporary left behind
    assert write_corpus(tmp_path / "again.txt", 50_000, seed=3) == n
    assert (tmp_path / "again.txt").read_bytes() == raw


@pytest.mark.parametrize(
    ("text", "value"),
    [("20MB", 20_000_000), ("1.5GB", 1_500_000_000), ("500kb", 500_000), ("3MiB", 3 * 2**20), ("42", 42), ("7 k", 7000)],
)
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "MB", "12XB", "-3MB", "0", "1..2MB"])
def test_parse_size_rejects(text):
    with pytest.raises(UserError, match=r"--builtin-stories"):
        parse_size(text, "--builtin-stories")


def test_format_size():
    assert format_size(999) == "999 B"
    assert format_size(20_000_000) == "20.0 MB"
    assert format_size(1.5e9) == "1.5 GB"
