"""`gpt2 generate` end to end: streaming through a real pipe, JSON, defaults, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from gpt2cli.checkpoint import save_checkpoint
from gpt2cli.config import ModelConfig
from gpt2cli.model import GPT
from gpt2cli.tokenizer import EOT_ID, get_tokenizer
from tests.conftest import run_cli
from tests.test_generation import chain_model

# " €é\n" spelled as single bytes: only the space and the newline are valid UTF-8 alone.
CYCLE_BYTES = (b" ", b"\xe2", b"\x82", b"\xac", b"\xc3", b"\xa9", b"\n")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Checkpoints: `cycle` repeats " €é\\n"; `chain` says " red fox ran" then ends;
    `random` is a small random model with the GPT-2 vocabulary."""
    root = tmp_path_factory.mktemp("ckpts")
    enc = get_tokenizer()
    cycle = [enc.encode_single_token(b) for b in CYCLE_BYTES]
    paths = {}
    paths["cycle"] = save_checkpoint(
        chain_model(dict(zip(cycle, cycle[1:] + cycle[:1], strict=True)), block_size=16), root / "cycle.safetensors"
    )
    red, fox, ran = enc.encode(" red fox ran")
    hi = enc.encode("Hi")[-1]
    chain = {EOT_ID: red, hi: red, red: fox, fox: ran, ran: EOT_ID}
    paths["chain"] = save_checkpoint(chain_model(chain), root / "chain.safetensors")
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=50257))
    paths["random"] = save_checkpoint(model, root / "random.safetensors")
    return paths


@pytest.mark.slow
def test_stream_is_readable_while_running_and_never_shows_replacement_chars(ckpts, tmp_path):
    """A real process on a pipe: lines arrive while it is still generating, and
    multi-byte characters split across tokens come out whole."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "gpt2cli", "generate", "Hello\n", "--ckpt", str(ckpts["cycle"]),
           "--temperature", "0", "--max-new-tokens", "100000"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=env)
    try:
        lines = [proc.stdout.readline() for _ in range(6)]
        still_running = proc.poll() is None
    finally:
        proc.kill()
        proc.communicate()
    assert still_running, "the first lines only arrived when the process ended"
    text = [line.decode("utf-8") for line in lines]  # strict: a split character would raise
    assert text == ["Hello\n"] + [" \u20ac\u00e9\n"] * 5
    assert not any("\ufffd" in line for line in text)


def test_json_output(ckpts):
    res = run_cli("generate", "Hi", "--ckpt", ckpts["chain"], "--json", "--seed", "5", "--num-samples", "2")
    assert res.code == 0, res.err
    record = json.loads(res.out)  # nothing but the JSON on stdout
    assert record["prompt"] == "Hi" and record["prompt_tokens"] == get_tokenizer().encode("Hi")
    assert record["settings"]["seed"] == 5 and record["settings"]["num_samples"] == 2
    assert len(record["samples"]) == 2
    red, fox, ran = get_tokenizer().encode(" red fox ran")
    for sample in record["samples"]:
        assert sample["tokens"] == [red, fox, ran, EOT_ID]
        assert sample["text"] == " red fox ran"
        assert sample["stop_reason"] == "eot"
        assert len(sample["logprobs"]) == len(sample["entropies"]) == 4
        assert all(-1e-3 < lp <= 0 for lp in sample["logprobs"])  # the chain is near certain
        assert all(0 <= h < 1e-2 for h in sample["entropies"])


def test_plain_output_streams_prompt_and_text(ckpts):
    res = run_cli("generate", "Hi", "--ckpt", ckpts["chain"], "--temperature", "0")
    assert res.code == 0, res.err
    assert res.out == "Hi red fox ran\n"
    assert "4 tokens" in res.err and "eot" in res.err


def test_several_samples_print_one_after_another(ckpts):
    res = run_cli("generate", "Hi", "--ckpt", ckpts["random"], "--num-samples", "3", "--seed", "1", "--max-new-tokens", "4")
    assert res.code == 0, res.err
    for i in (1, 2, 3):
        assert f"sample {i} of 3" in res.out
    assert res.out.count("Hi") == 3


def test_seed_makes_samples_repeat(ckpts):
    args = ("generate", "Hi", "--ckpt", ckpts["random"], "--json", "--max-new-tokens", "8", "--num-samples", "2")
    first = json.loads(run_cli(*args, "--seed", "7").out)["samples"]
    again = json.loads(run_cli(*args, "--seed", "7").out)["samples"]
    other = json.loads(run_cli(*args, "--seed", "8").out)["samples"]
    assert [s["tokens"] for s in first] == [s["tokens"] for s in again]
    assert first[0]["tokens"] != first[1]["tokens"]
    assert [s["tokens"] for s in other] != [s["tokens"] for s in first]


def test_stop_string_is_not_printed(ckpts):
    res = run_cli("generate", "Hi", "--ckpt", ckpts["chain"], "--temperature", "0", "--stop", "x r", "--json")
    assert res.code == 0, res.err
    (sample,) = json.loads(res.out)["samples"]
    assert sample["text"] == " red fo" and sample["stop_reason"] == "stop"


def test_empty_prompt_starts_from_endoftext(ckpts):
    res = run_cli("generate", "", "--ckpt", ckpts["chain"], "--temperature", "0", "--json")
    assert res.code == 0, res.err
    record = json.loads(res.out)
    assert record["prompt_tokens"] == [EOT_ID]
    assert record["samples"][0]["text"] == " red fox ran"
    assert "starting from <|endoftext|>" in res.err


def test_prompt_longer_than_context_keeps_its_tail(ckpts):
    prompt = "Hello\n" * 20  # 40 tokens, context 16
    res = run_cli("generate", prompt, "--ckpt", ckpts["cycle"], "--temperature", "0", "--max-new-tokens", "4")
    assert res.code == 0, res.err
    assert "more than the context of 16" in res.err
    assert res.out == prompt + " \u20ac\n"  # " ", E2, 82, AC: the euro sign completes


def test_default_checkpoint_is_the_newest_under_runs(ckpts, tmp_path):
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "ckpt.safetensors").write_bytes(ckpts["chain"].read_bytes())
    res = run_cli("generate", "Hi", "--temperature", "0", cwd=tmp_path)
    assert res.code == 0, res.err
    assert res.out == "Hi red fox ran\n"
    assert "runs/a/ckpt.safetensors" in res.err


def test_no_checkpoint_anywhere(tmp_path):
    res = run_cli("generate", "Hi", cwd=tmp_path)
    assert res.code == 2
    assert res.err.strip().count("\n") == 0 and "no --ckpt given" in res.err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--top-p", "1.5"], "--top-p 1.5: must be in (0, 1]"),
        (["--top-p", "0"], "--top-p 0.0: must be in (0, 1]"),
        (["--top-k", "0"], "--top-k 0: must be at least 1"),
        (["--temperature", "-1"], "--temperature -1.0: must be >= 0 (0 means greedy)"),
        (["--max-new-tokens", "0"], "--max-new-tokens 0: must be at least 1"),
        (["--num-samples", "0"], "--num-samples 0: must be positive"),
        (["--repetition-penalty", "0"], "--repetition-penalty 0.0: must be positive (1 means none)"),
        (["--dtype", "fp16"], "--dtype fp16: expected auto, fp32, bf16"),
        (["--device", "tpu"], "--device tpu: expected auto, cpu, cuda or mps"),
        (["--stop", ""], "--stop: a stop string must not be empty"),
    ],
)
def test_bad_flags_exit_2_with_one_line(ckpts, args, message):
    res = run_cli("generate", "Hi", "--ckpt", ckpts["chain"], *args)
    assert res.code == 2
    assert res.err.strip().splitlines() == [f"error: {message}"]
    assert res.out == ""


def test_bad_checkpoints_exit_2(ckpts, tmp_path):
    res = run_cli("generate", "Hi", "--ckpt", tmp_path / "missing.safetensors")
    assert res.code == 2 and "missing.safetensors: no such file" in res.err
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(foreign))
    res = run_cli("generate", "Hi", "--ckpt", foreign)
    assert res.code == 2 and "not a gpt2cli checkpoint" in res.err
    pickle = tmp_path / "model.pt"
    torch.save({"x": torch.zeros(2)}, pickle)  # written here only to check it is refused unread
    res = run_cli("generate", "Hi", "--ckpt", pickle)
    assert res.code == 2 and "refusing" in res.err


def test_non_utf8_prompt_exits_2(ckpts):
    # What Python makes of argv bytes that are not UTF-8 (surrogateescape).
    res = run_cli("generate", b"caf\xe9".decode("utf-8", "surrogateescape"), "--ckpt", ckpts["chain"])
    assert res.code == 2 and res.err.strip() == "error: PROMPT: not valid UTF-8"


def test_prompt_outside_a_small_vocabulary_exits_2(tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(GPT(ModelConfig(n_layer=1, n_head=1, n_embd=16, block_size=8, vocab_size=100)), tmp_path / "small.safetensors")
    res = run_cli("generate", "Hello", "--ckpt", path, "--temperature", "0")
    assert res.code == 2 and "outside this model's vocabulary (100 tokens)" in res.err


def test_help_has_an_example_and_explains_the_window():
    res = run_cli("generate", "--help")
    assert res.code == 0
    assert "gpt2 generate" in res.out and "block_size-1" in res.out


def test_bf16_from_the_command_line(ckpts):
    res = run_cli("generate", "Hi", "--ckpt", ckpts["chain"], "--temperature", "0", "--dtype", "bf16", "--json")
    assert res.code == 0, res.err
    record = json.loads(res.out)
    assert record["settings"]["dtype"] == "bfloat16"
    assert record["samples"][0]["text"] == " red fox ran"
