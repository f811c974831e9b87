"""The README's fine-tuning walk-through runs as written, with `gpt2` (a hub name) swapped for a
tiny local Hugging Face GPT-2 and the train line cut to 2 steps on the CPU."""

from __future__ import annotations

import shlex

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gpt2cli.checkpoint import read_metadata
from gpt2cli.data.stories import write_corpus
from tests.conftest import REPO, run_cli

HEADING = "#### Fine-tuning GPT-2 on your own text"


def walkthrough() -> list[list[str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split(HEADING, 1)[1]
    block = section.split("```", 2)[1]
    return [shlex.split(line) for line in block.splitlines() if line.startswith("gpt2 ")]


@pytest.mark.slow
def test_readme_finetuning_walkthrough_runs(tmp_path, one_thread):
    commands = walkthrough()
    assert [c[1] for c in commands] == ["tokenize", "train", "generate", "eval"]
    write_corpus(tmp_path / "mytext.txt", 60_000, seed=5)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)).save_pretrained(tmp_path / "tiny-hf")
    for argv in commands:
        args = argv[1:]
        if args[0] == "train":
            args[args.index("--init-from") + 1] = "tiny-hf"
            args += ["--steps", "2", "--device", "cpu", "--set", "train.sample_tokens=8"]
        r = run_cli(*args, cwd=tmp_path)
        assert r.code == 0, (argv, r.err)
        if args[0] in ("generate", "eval"):
            assert r.out.strip(), argv
    ckpt = tmp_path / "runs/mytext-gpt2/ckpt.safetensors"
    assert read_metadata(ckpt)["init_from"] == "tiny-hf"
    assert (tmp_path / "runs/mytext-gpt2/eval.json").is_file()
