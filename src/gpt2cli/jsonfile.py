"""JSON objects read from files: one reader, one pair of messages.

A user's file that should hold a JSON object (a Hugging Face config.json, a
data dir's meta.json, a shard index) and does not gets one of two lines,
whatever reads it: `PATH: not valid JSON` or `PATH: not a JSON object
(expected WHAT)`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gpt2cli.errors import UserError


def parse_json_object(text: str | bytes, where: str | os.PathLike, what: str) -> dict[str, Any]:
    """`text` as a JSON object; `where` names it in the message, `what` says what it should be."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{where}: not valid JSON") from None
    if not isinstance(value, dict):
        raise UserError(f"{where}: not a JSON object (expected {what})")
    return value


def read_json_object(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The JSON object in file `path` (OSErrors propagate: they are the machine's, not the file's)."""
    return parse_json_object(Path(path).read_bytes(), path, what)
