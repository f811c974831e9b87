"""The packaged GPT-2 tokenizer: known ids, exact round trips, no network."""

from __future__ import annotations

import socket

import pytest

from gpt2cli.tokenizer import EOT_ID, get_tokenizer

TEXTS = [
    "Hello world",
    "Café déjà vu, naïve façade — «guillemets»",
    "日本語のテキストと中文字符，한국어도",
    "emoji 🐶🦊🎉👩‍👩‍👧 and flags 🇫🇷",
    "  leading spaces\n\ttabs and\r\nnewlines  ",
    "It's they'll we've I'm you'd 12345 3.14",
]


def test_hello_world_ids():
    assert get_tokenizer().encode_ordinary("Hello world") == [15496, 995]


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(text):
    enc = get_tokenizer()
    assert enc.decode(enc.encode_ordinary(text)) == text


def test_endoftext_is_50256_and_vocab_size():
    enc = get_tokenizer()
    assert enc.eot_token == EOT_ID == 50256
    assert enc.n_vocab == 50257
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]


def test_works_with_sockets_blocked(monkeypatch):
    get_tokenizer.cache_clear()

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    try:
        enc = get_tokenizer()
        assert enc.encode_ordinary("Hello world") == [15496, 995]
    finally:
        get_tokenizer.cache_clear()
