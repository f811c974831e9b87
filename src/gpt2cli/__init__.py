"""gpt2cli: a mechanically faithful GPT-2 that makes small-model failure modes measurable."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# The public names load on first use (PEP 562), so `gpt2 tokenize` and other
# commands that never touch a tensor start without importing torch (~2-4 s),
# and the tokenizer's worker processes fork from a smaller parent.
_EXPORTS = {
    "GPT": "gpt2cli.model",
    "ModelConfig": "gpt2cli.config",
    "RunConfig": "gpt2cli.config",
    "TrainConfig": "gpt2cli.config",
    "get_tokenizer": "gpt2cli.tokenizer",
    "load_checkpoint": "gpt2cli.checkpoint",
    "save_checkpoint": "gpt2cli.checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'gpt2cli' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
