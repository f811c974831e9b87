"""The GPT-2 network and its attention kinds."""

from gpt2cli.model.attention import Probe
from gpt2cli.model.gpt import GPT, DecodeState

__all__ = ["GPT", "DecodeState", "Probe"]
