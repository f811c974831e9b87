"""gpt2cli: a mechanically faithful GPT-2 that makes small-model failure modes measurable."""

from gpt2cli.checkpoint import load_checkpoint, save_checkpoint
from gpt2cli.config import ModelConfig, RunConfig, TrainConfig
from gpt2cli.model import GPT
from gpt2cli.tokenizer import get_tokenizer

__version__ = "0.1.0"

__all__ = [
    "GPT",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "get_tokenizer",
    "load_checkpoint",
    "save_checkpoint",
]
