"""GPT-2's byte-level BPE through tiktoken, from the ranks shipped in the package.

No network: the ranks file is package data and its sha256 is checked at load.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from importlib import resources

import tiktoken

from gpt2cli.errors import UserError

TOKENIZER_NAME = "gpt2"
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT_TEXT = "<|endoftext|>"
EOT_ID = 50256
VOCAB_SIZE = 50257
# r50k_base's pre-tokenisation pattern (GPT-2 encoder.py), as tiktoken spells it.
SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def _load_ranks() -> dict[bytes, int]:
    raw = (resources.files("gpt2cli") / "assets" / "gpt2.tiktoken").read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != RANKS_SHA256:
        raise UserError(f"packaged gpt2.tiktoken is damaged (sha256 {digest[:12]}…); reinstall gpt2cli")
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@lru_cache(maxsize=1)
def get_tokenizer() -> tiktoken.Encoding:
    """The GPT-2 tokenizer: `encode_ordinary`, `decode`, `eot_token` == 50256."""
    return tiktoken.Encoding(
        name=TOKENIZER_NAME,
        pat_str=SPLIT_PATTERN,
        mergeable_ranks=_load_ranks(),
        special_tokens={EOT_TEXT: EOT_ID},
    )
