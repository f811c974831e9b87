"""The bad-input matrix: every command x every mistake that applies to it.

One table, `CASES`, drives both the tests here and docs/bad-input.md (a test
checks that the doc shows exactly this table, so the two cannot drift; run
`python tests/test_bad_input_matrix.py` to rewrite the doc's table after a
change). Each case runs the command in a folder of prepared bad files and
checks: exit code 2, stderr is exactly the one line in the table (naming the
input and what is wrong), no traceback, no file was ever unpickled, and the
sha256 of every file in the folder is the same after the case as before
(nothing changed, nothing left behind; a case that exits 0 may add files).
A `<machine>` in a line stands for a figure of the machine (free memory, cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

if __name__ == "__main__":  # run as a script from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpt2cli.checkpoint import save_checkpoint  # noqa: E402
from gpt2cli.errors import UserError, shown_path  # noqa: E402
from tests.conftest import REPO, run_cli, tiny_model, tiny_preset, tokenize_stories  # noqa: E402

DOC = REPO / "docs" / "bad-input.md"
BEGIN, END = "<!-- matrix:begin (generated from tests/test_bad_input_matrix.py) -->", "<!-- matrix:end -->"
SENTINEL = "UNPICKLED"  # what the pickle fixture would create if anything ever loaded it

# The matrix's columns, in the order the doc lists them.
MISSING = "missing path"
DIRECTORY = "directory for a file (or file for a directory)"
EMPTY = "empty file"
TRUNCATED = "truncated safetensors"
FOREIGN = "safetensors from another program"
PICKLE = "pickle file (never unpickled)"
ODD = "shard with an odd byte length"
BIG_ID = "shard with token ids >= vocab size"
VOCAB = "data and model with different vocabularies"
CORRUPT = "corrupt meta.json or checkpoint metadata"
LONG = "prompt longer than the context"
NON_UTF8 = "non-UTF-8 prompt or text"
NOT_POSITIVE = "zero or negative number"
TOP_P = "top-p outside (0, 1]"
UNWRITABLE = "unwritable output"
NOT_FINITE = "inf, nan or out-of-range number"
MEMORY = "sizes that cannot fit in memory"
NAN_WEIGHTS = "checkpoint with NaN or inf weights"
NON_UTF8_NAME = "file name that is not UTF-8"
NOT_OBJECT = "JSON that is not an object"
BAD_CACHE = "damaged n-gram cache (rebuilt)"
MANY_SHARDS = "2,000 shards, open files limited to 128"
SHARDED = "sharded weights: bad index, missing shard or tensor"
MACHINE = "<machine>"
KINDS = (MISSING, DIRECTORY, EMPTY, TRUNCATED, FOREIGN, PICKLE, ODD, BIG_ID, VOCAB, CORRUPT, LONG, NON_UTF8,
         NOT_POSITIVE, TOP_P, UNWRITABLE, NOT_FINITE, MEMORY, NAN_WEIGHTS, NON_UTF8_NAME, NOT_OBJECT, BAD_CACHE,
         MANY_SHARDS)
KINDS += (SHARDED,)
# The output policy (gpt2cli/outputs.py): what a command must never write over.
EXISTS = "existing output without --force"
IS_INPUT = "output is an input (or a link to one)"
OWN_FILE = "output is a run/data dir's own file"
LOCKED = "run/data dir in use by another writer"
OUTPUT_KINDS = (EXISTS, IS_INPUT, OWN_FILE, LOCKED)
KINDS += OUTPUT_KINDS

NON_UTF8_ARG = os.fsdecode(b"caf\xe9")  # what Python makes of the argv bytes 63 61 66 e9 (surrogateescape)


@dataclass(frozen=True)
class Case:
    command: str
    kind: str
    args: tuple[str, ...]
    message: str  # the one line on stderr, after "error: " (for code 0: a line stderr must hold)
    code: int = 2
    process: bool = False  # run as a real process: the argument must reach argv as raw bytes
    pending: str | None = None  # the owner of the command is still finishing it (strict xfail)
    nofile: int | None = None  # run as a process under this RLIMIT_NOFILE

    @property
    def id(self) -> str:
        return " ".join(map(_shown, self.args))


# -- the fixture folder: every bad file a case names ------------------------------------------
class _Evil:
    """Unpickling this runs `touch UNPICKLED` — so the sentinel proves nothing was unpickled."""

    def __reduce__(self):
        return (os.system, (f"touch {SENTINEL}",))


TINY_PRESET = tiny_preset(steps=2, sample_prompts=[])


def build_fixtures(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    tokenize_stories(root, "40KB", "--seed", "3")
    save_checkpoint(tiny_model(0, vocab_size=50257), root / "ckpt.safetensors")
    save_checkpoint(tiny_model(0, vocab_size=128), root / "small-vocab.safetensors")
    raw = (root / "ckpt.safetensors").read_bytes()
    (root / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    save_file({"weight": torch.zeros(3)}, str(root / "foreign.safetensors"), metadata={"format": "pt"})
    (root / "pickle.pt").write_bytes(pickle.dumps({"weights": _Evil()}))
    (root / "empty.safetensors").write_bytes(b"")
    with safe_open(str(root / "small-vocab.safetensors"), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_file(tensors, str(root / "bad-config.safetensors"), metadata={**meta, "config": '{"n_layer": 2,'})
    (root / "folder").mkdir()
    (root / "folder.toml").mkdir()
    (root / "notes.txt").write_text("Once upon a time there was a cat.\n", encoding="utf-8")
    (root / "empty.txt").write_bytes(b"")
    (root / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    (root / "tiny.toml").write_text(TINY_PRESET, encoding="utf-8")
    (root / "latin1.toml").write_bytes('[train]\nsample_prompts = ["café"]\n'.encode("latin-1"))
    for name in ("data-odd", "data-big-id", "data-bad-meta", "data-empty-meta", "data-list-meta"):
        shutil.copytree(root / "data", root / name)
    for split in ("train", "val"):
        with open(root / f"data-odd/{split}_000000.bin", "ab") as fh:
            fh.write(b"\0")
        ids = np.memmap(root / f"data-big-id/{split}_000000.bin", dtype="<u2", mode="r+")
        ids[5] = 60000
        ids.flush()
        del ids
    (root / "data-bad-meta/meta.json").write_text('{"format": "gpt2cli-data/1", "tokenizer": ', encoding="utf-8")
    (root / "data-empty-meta/meta.json").write_bytes(b"")
    (root / "data-list-meta/meta.json").write_text("[]", encoding="utf-8")
    for kind, src in (("truncated", "truncated.safetensors"), ("foreign", "foreign.safetensors"),
                      ("pickle", "pickle.pt"), ("empty", "empty.safetensors")):
        run = root / f"run-{kind}"
        run.mkdir()
        for name in ("ckpt.safetensors", "ckpt.optim.safetensors"):
            shutil.copy(root / src, run / name)
    r = run_cli("convert", "to-hf", "small-vocab.safetensors", "hf", cwd=root)
    assert r.code == 0, r.err
    shutil.copytree(root / "hf", root / "hf-bad-config")
    (root / "hf-bad-config/config.json").write_text('{"n_head": 2,', encoding="utf-8")
    (root / "hf-pickle").mkdir()
    shutil.copy(root / "pickle.pt", root / "hf-pickle/pytorch_model.bin")
    shutil.copytree(root / "hf", root / "hf-relu")  # a GPT-2 config our model cannot reproduce
    config = (root / "hf/config.json").read_text(encoding="utf-8").replace('"gelu_new"', '"relu"')
    (root / "hf-relu/config.json").write_text(config, encoding="utf-8")
    shutil.copytree(root / "hf", root / "hf-list-config")
    (root / "hf-list-config/config.json").write_text("[1, 2]", encoding="utf-8")
    _sharded_fixtures(root)
    # For the output policy: a run dir (its files only need their names), links to a checkpoint,
    # and a gpt2cli checkpoint named like an HF export's weights.
    run = root / "run-ok"
    run.mkdir()
    for name in ("ckpt.safetensors", "ckpt.optim.safetensors"):
        shutil.copy(root / "small-vocab.safetensors", run / name)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 4.5, "lr": 0.001}\n', encoding="utf-8")
    (run / "samples.jsonl").write_text("", encoding="utf-8")
    (run / "config.json").write_text("{}\n", encoding="utf-8")
    (run / "heads.json").write_text("{}\n", encoding="utf-8")  # an earlier `inspect heads`, kept for `report`
    (run / "report-loss.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # an earlier `report`'s picture
    os.symlink("ckpt.safetensors", root / "link.safetensors")
    os.link(root / "ckpt.safetensors", root / "hard.safetensors")
    (root / "ours-in-dir").mkdir()
    shutil.copy(root / "small-vocab.safetensors", root / "ours-in-dir/model.safetensors")
    shutil.copytree(root / "data", root / "data-locked")  # locked by `lock_holder` for the LOCKED rows
    shutil.copytree(run, root / "run-locked")
    _environment_fixtures(root)


def _shard(src: Path, dst: Path, n: int = 3) -> dict[str, str]:
    """`src`'s model.safetensors split over n files as save_pretrained shards them; returns the weight_map."""
    dst.mkdir()
    shutil.copy(src / "config.json", dst)
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        names = sorted(f.keys())
        tensors = {k: f.get_tensor(k) for k in names}
    weight_map = {}
    for k in range(n):
        file = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        save_file({name: tensors[name] for name in names[k::n]}, str(dst / file), metadata={"format": "pt"})
        weight_map.update({name: file for name in names[k::n]})
    return weight_map


def _sharded_fixtures(root: Path) -> None:
    def index(name: str, value) -> None:
        text = value if isinstance(value, str) else json.dumps(value)
        (root / name / "model.safetensors.index.json").write_text(text, encoding="utf-8")

    weight_map = _shard(root / "hf", root / "hf-sharded")
    index("hf-sharded", {"metadata": {}, "weight_map": weight_map})
    for name in ("bad-index", "list-index", "no-map", "missing", "no-tensor", "wrong-file", "escape", "pickle"):
        shutil.copytree(root / "hf-sharded", root / f"hf-shard-{name}")
    index("hf-shard-bad-index", '{"weight_map": {')
    index("hf-shard-list-index", [weight_map])
    index("hf-shard-no-map", {"metadata": {"total_size": 1}})
    (root / "hf-shard-missing/model-00002-of-00003.safetensors").unlink()
    index("hf-shard-no-tensor", {"weight_map": {k: v for k, v in weight_map.items() if k != "transformer.ln_f.bias"}})
    index("hf-shard-wrong-file", {"weight_map": {**weight_map, "transformer.ln_f.weight": "model-00001-of-00003.safetensors"}})
    index("hf-shard-escape", {"weight_map": {**weight_map, "transformer.ln_f.bias": "../hf/model.safetensors"}})
    shutil.copy(root / "pickle.pt", root / "hf-shard-pickle/pytorch_model-00001-of-00001.bin")
    index("hf-shard-pickle", {"weight_map": {**weight_map, "transformer.wte.weight": "pytorch_model-00001-of-00001.bin"}})


def _environment_fixtures(root: Path) -> None:
    from gpt2cli.analysis.ngram_index import INDEX_NS, cache_key
    from gpt2cli.data.meta import read_meta
    from tests.test_reader import write_split_data

    (root / "out").mkdir()  # where the accepted cases write

    model = tiny_model(0, vocab_size=50257)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    save_checkpoint(model, root / "nan.safetensors")
    shutil.copytree(root / "hf", root / "hf-nan")
    with safe_open(str(root / "hf-nan/model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["transformer.ln_f.weight"][:3] = float("inf")
    save_file(tensors, str(root / "hf-nan/model.safetensors"), metadata={"format": "pt"})
    os.link(root / "ckpt.safetensors", root / f"{NON_UTF8_ARG}.safetensors")
    shutil.copytree(root / "data", root / f"{NON_UTF8_ARG}-data")
    shutil.copy(root / "tiny.toml", root / f"{NON_UTF8_ARG}.toml")
    shutil.copytree(root / "data", root / "data-bad-index")
    key = cache_key([s.sha256 for s in read_meta(root / "data").split_shards("train")], INDEX_NS)
    (root / "data-bad-index/.ngram_index" / key).mkdir(parents=True)
    (root / "data-bad-index/.ngram_index" / key / "index.json").write_text("{", encoding="utf-8")
    rng = np.random.default_rng(0)
    write_split_data(root / "data-many", {"train": [rng.integers(0, 1000, size=24) for _ in range(2000)],
                                          "val": [rng.integers(0, 1000, size=200)]})


# -- the cases ---------------------------------------------------------------------------------
TRUNC = "truncated or damaged safetensors file (3270844 bytes on disk, header expects 6541688)"
NOT_OURS = ("a safetensors file but not a gpt2cli checkpoint (no format=gpt2cli/1); "
            "for Hugging Face weights use `gpt2 convert from-hf`")
PICKLED = "a pickle/torch.save file, not safetensors; refusing to load it"
BAD_CKPTS = (
    (MISSING, "missing.safetensors", "missing.safetensors: no such file"),
    (DIRECTORY, "folder", "folder: is a directory, expected a .safetensors checkpoint"),
    (EMPTY, "empty.safetensors", "empty.safetensors: empty file, expected a .safetensors checkpoint"),
    (TRUNCATED, "truncated.safetensors", f"truncated.safetensors: {TRUNC}"),
    (FOREIGN, "foreign.safetensors", f"foreign.safetensors: {NOT_OURS}"),
    (PICKLE, "pickle.pt", f"pickle.pt: {PICKLED}"),
    (CORRUPT, "bad-config.safetensors", "bad-config.safetensors: checkpoint metadata `config`: not valid JSON"),
)
BAD_DATA = (
    (MISSING, "missing-data", "missing-data: no such data directory (run `gpt2 tokenize` first)"),
    (DIRECTORY, "notes.txt", "notes.txt: not a directory (expected a tokenized data dir)"),
    (EMPTY, "data-empty-meta",
     "data-empty-meta/meta.json: empty file, not valid JSON (an interrupted `gpt2 tokenize`? run it again)"),
    (CORRUPT, "data-bad-meta", "data-bad-meta/meta.json: not valid JSON"),
    (ODD, "data-odd", "data-odd/{split}_000000.bin: odd byte length, not uint16 tokens"),
)
RELU = 'hf-relu/config.json: activation_function="relu" cannot be reproduced (gpt2cli\'s GPT-2 has the tanh GELU, gelu_new)'
BIG_ID_MSG = "data-big-id/train_000000.bin: token id 60000 at position 5 is outside the vocabulary (size 50257)"


def _tokenize() -> list[Case]:
    def t(kind, *args, message):
        return Case("tokenize", kind, ("tokenize", *args, "--workers", "1"), message)

    return [
        t(MISSING, "missing.txt", "-o", "out/t", message="missing.txt: no such file or directory"),
        t(DIRECTORY, "folder", "-o", "out/t", message="folder: directory holds no .txt, .jsonl or .gz files"),
        t(EMPTY, "empty.txt", "-o", "out/t", message="empty.txt: no documents (empty corpus)"),
        t(PICKLE, "pickle.pt", "-o", "out/t", message="pickle.pt: binary file (NUL byte at offset 4), not text"),
        t(NON_UTF8, "latin1.txt", "--strict", "-o", "out/t",
          message="latin1.txt: not valid UTF-8 at byte 3 (drop --strict to replace bad bytes with U+FFFD)"),
        t(NOT_POSITIVE, "notes.txt", "-o", "out/t", "--shard-tokens", "-5", message="--shard-tokens -5: must be positive"),
        t(NOT_POSITIVE, "notes.txt", "-o", "out/t", "--val-fraction", "0",
          message="--val-fraction 0.0: must be between 0 and 1 (exclusive)"),
        t(NOT_POSITIVE, "--builtin-stories", "0", "-o", "out/t",
          message="--builtin-stories '0': must be more than zero bytes"),
        Case("tokenize", NOT_POSITIVE, ("tokenize", "notes.txt", "-o", "out/t", "--workers", "0"),
             "--workers 0: must be positive"),
        t(UNWRITABLE, "notes.txt", "-o", "notes.txt/data",
          message="-o notes.txt/data: cannot create the directory (Not a directory)"),
        t(UNWRITABLE, "notes.txt", "-o", "notes.txt", message="-o notes.txt: exists and is not a directory"),
    ]


def _train() -> list[Case]:
    def t(kind, *args, message, pending=None):
        return Case("train", kind, ("train", *args), message, pending=pending)

    base = ("--preset", "tiny.toml", "--device", "cpu")
    cases = [t(kind, *base, "--data", data, "--out", f"runs/{data}",
               message=("--data " if kind == MISSING else "") + msg.format(split="train"))
             for kind, data, msg in BAD_DATA]
    cases += [
        t(BIG_ID, *base, "--data", "data-big-id", "--out", "runs/big-id", message=BIG_ID_MSG),
        t(VOCAB, *base, "--data", "data", "--out", "runs/v", "--set", "model.vocab_size=128",
          message="--data data: token vocabulary has 50257 entries, but the model's vocab_size is 128"),
        t(MISSING, "--preset", "missing.toml", "--data", "data", "--out", "runs/p",
          message="--preset missing.toml: no such file"),
        t(DIRECTORY, "--preset", "folder.toml", "--data", "data", "--out", "runs/p",
          message="--preset folder.toml: is a directory, expected a .toml file"),
        t(NON_UTF8, "--preset", "latin1.toml", "--data", "data", "--out", "runs/p",
          message="latin1.toml: not UTF-8 text at byte 30 (TOML files are UTF-8)"),
        t(EMPTY, "--data", "data", "--out", "run-empty", "--resume",
          message="run-empty/ckpt.optim.safetensors: empty file, expected a .safetensors checkpoint"),
        t(TRUNCATED, "--data", "data", "--out", "run-truncated", "--resume",
          message=f"run-truncated/ckpt.optim.safetensors: {TRUNC}"),
        t(FOREIGN, "--data", "data", "--out", "run-foreign", "--resume",
          message="run-foreign/ckpt.optim.safetensors: not a gpt2cli resume state (no format=gpt2cli-resume/1)"),
        t(PICKLE, "--data", "data", "--out", "run-pickle", "--resume",
          message=f"run-pickle/ckpt.optim.safetensors: {PICKLED}"),
        t(LONG, *base, "--data", "data", "--out", "runs/long", "--block-size", "500",
          message="data: the val split has 165 tokens, fewer than block size + 1 = 501; "
                  "use a smaller --block-size or more data"),
        t(UNWRITABLE, *base, "--data", "data", "--out", "notes.txt/run",
          message="--out notes.txt/run: cannot create the directory (Not a directory)"),
        t(UNWRITABLE, *base, "--data", "data", "--out", "notes.txt",
          message="--out notes.txt: exists and is not a directory"),
    ]
    # --init-from: pretrained weights (a hub name offline with an empty cache: docs/bad-input.md, below the table).
    init = ("--preset", "tiny.toml", "--device", "cpu", "--data", "data", "--out", "runs/i", "--init-from")
    cases += [
        t(MISSING, *init, "missing.safetensors", message="--init-from missing.safetensors: no such file or directory"),
        t(TRUNCATED, *init, "truncated.safetensors", message=f"truncated.safetensors: {TRUNC}"),
        t(PICKLE, *init, "pickle.pt", message=f"pickle.pt: {PICKLED}"),
        t(PICKLE, *init, "hf-pickle", message="hf-pickle: only pytorch_model.bin (a pickle) found; need model.safetensors"),
        t(CORRUPT, *init, "hf-bad-config", message="hf-bad-config/config.json: not valid JSON"),
        t(FOREIGN, *init, "hf-relu", message=RELU),
        t(VOCAB, *init, "hf", message="--data data: token vocabulary has 50257 entries, but the model's vocab_size is 128"),
        t(LONG, *init, "hf", "--block-size", "64", message="--block-size 64: larger than the context of hf (32 positions)"),
        *_sharded("train", ("train", *init), ()),
        t(NOT_POSITIVE, *base, "--data", "data", "--out", "runs/n", "--dropout", "-0.1",
          message="--dropout -0.1: must be in [0, 1)"),
    ]
    for flag, value, msg in (
        ("--steps", "0", "must be positive"),
        ("--batch-size", "-2", "must be positive"),
        ("--block-size", "0", "must be positive"),
        ("--grad-accum", "0", "must be positive"),
        ("--lr", "0", "must be positive"),
        ("--eval-every", "0", "must be positive"),
        ("--save-every", "-1", "must be positive"),
        ("--skip-nonfinite", "-1", "must be 0 or more"),
    ):
        shown = "0.0" if flag == "--lr" else value
        cases.append(t(NOT_POSITIVE, *base, "--data", "data", "--out", "runs/n", flag, value,
                       message=f"{flag} {shown}: {msg}"))
    return cases


GEN = ("--device", "cpu", "--dtype", "fp32", "--seed", "1", "--max-new-tokens", "3")


def _generate() -> list[Case]:
    def g(kind, prompt, *args, message, code=2, process=False):
        return Case("generate", kind, ("generate", prompt, *args), message, code=code, process=process)

    cases = [g(kind, "hi", "--ckpt", ckpt, *GEN, message=msg) for kind, ckpt, msg in BAD_CKPTS]
    ok = ("--ckpt", "ckpt.safetensors", "--device", "cpu", "--dtype", "fp32", "--seed", "1")
    cases += [
        g(VOCAB, "hi", "--ckpt", "small-vocab.safetensors", *GEN,
          message="small-vocab.safetensors: PROMPT token 5303 is outside this model's vocabulary "
                  "(128 tokens); the GPT-2 tokenizer has 50257"),
        # Accepted by design: the model sees the prompt's last block_size tokens, and a note says so.
        g(LONG, "hi " * 60, *ok, "--max-new-tokens", "3", code=0,
          message="using prompt: 61 tokens, more than the context of 32; the model sees the last 32"),
        g(NON_UTF8, NON_UTF8_ARG, *ok, process=True, message="PROMPT: not valid UTF-8"),
        g(NOT_POSITIVE, "hi", *ok, "--max-new-tokens", "0", message="--max-new-tokens 0: must be at least 1"),
        g(NOT_POSITIVE, "hi", *ok, "--num-samples", "0", message="--num-samples 0: must be positive"),
        g(NOT_POSITIVE, "hi", *ok, "--top-k", "0", message="--top-k 0: must be at least 1"),
        g(NOT_POSITIVE, "hi", *ok, "--temperature", "-1", message="--temperature -1.0: must be >= 0 (0 means greedy)"),
        g(NOT_POSITIVE, "hi", *ok, "--repetition-penalty", "0",
          message="--repetition-penalty 0.0: must be positive (1 means none)"),
        g(TOP_P, "hi", *ok, "--top-p", "0", message="--top-p 0.0: must be in (0, 1]"),
        g(TOP_P, "hi", *ok, "--top-p", "1.5", message="--top-p 1.5: must be in (0, 1]"),
        g(TOP_P, "hi", *ok, "--top-p", "-0.2", message="--top-p -0.2: must be in (0, 1]"),
    ]
    return cases


EVAL = ("--device", "cpu", "--dtype", "fp32", "--prompt-tokens", "8", "--suffix-tokens", "8")


def _eval() -> list[Case]:
    def e(kind, *args, message):
        fixed = EVAL if "--prompt-tokens" not in args else EVAL[:4]
        return Case("eval", kind, ("eval", *args, *fixed), message)

    cases = [e(kind, ckpt, "--data", "data", message=msg) for kind, ckpt, msg in BAD_CKPTS]
    cases += [e(kind, "ckpt.safetensors", "--data", data, message=msg.format(split="train"))
              for kind, data, msg in BAD_DATA]
    ok = ("ckpt.safetensors", "--data", "data")
    cases += [
        e(BIG_ID, "ckpt.safetensors", "--data", "data-big-id", message=BIG_ID_MSG),
        e(VOCAB, "small-vocab.safetensors", "--data", "data",
          message="data: token vocabulary has 50257 entries, but the model's vocab_size is 128"),
        e(MISSING, *ok, "--prompts", "missing.txt", message="--prompts missing.txt: no such file"),
        e(DIRECTORY, *ok, "--prompts", "folder", message="--prompts folder: is a directory, expected a text file"),
        e(EMPTY, *ok, "--prompts", "empty.txt", message="--prompts empty.txt: no prompts in it (one prompt per line)"),
        e(NON_UTF8, *ok, "--prompts", "latin1.txt", message="--prompts latin1.txt: not UTF-8 text"),
        e(LONG, *ok, "--prompt-tokens", "30", "--suffix-tokens", "30",
          message="--prompt-tokens 30 + --suffix-tokens 30 exceed the model's context of 32 tokens"),
        e(NOT_POSITIVE, *ok, "--eval-tokens", "0", message="--eval-tokens 0: must be positive"),
        e(NOT_POSITIVE, *ok, "--num-samples", "-1", message="--num-samples -1: must be positive"),
        e(NOT_POSITIVE, *ok, "--max-new-tokens", "0", message="--max-new-tokens 0: must be positive"),
        e(NOT_POSITIVE, *ok, "--top-k", "0", message="--top-k 0: must be at least 1"),
        e(TOP_P, *ok, "--top-p", "0", message="--top-p 0.0: must be in (0, 1]"),
        e(TOP_P, *ok, "--top-p", "2", message="--top-p 2.0: must be in (0, 1]"),
        e(UNWRITABLE, *ok, "--json", "notes.txt/eval.json",
          message="--json notes.txt/eval.json: cannot write there (notes.txt is not a directory)"),
        e(UNWRITABLE, *ok, "--json", "folder", message="--json folder: is a directory, expected a file name"),
    ]
    return cases


def _inspect_model() -> list[Case]:
    cases = [Case("inspect model", kind, ("inspect", "model", ckpt), msg) for kind, ckpt, msg in BAD_CKPTS]
    cases.append(Case("inspect model", MISSING, ("inspect", "model", "--preset", "missing.toml"),
                      "--preset missing.toml: no such file"))
    return cases




def _inspect_heads() -> list[Case]:
    def h(kind, *args, message, pending=None):
        return Case("inspect heads", kind, ("inspect", "heads", *args, "--device", "cpu"), message, pending=pending)

    cases = [h(kind, ckpt, "--data", "data", message=msg) for kind, ckpt, msg in BAD_CKPTS]
    # inspect heads reads the val split only.
    cases += [h(kind, "ckpt.safetensors", "--data", data, message=msg.format(split="val"))
              for kind, data, msg in BAD_DATA]
    ok = ("ckpt.safetensors", "--data", "data")
    small = ("--tokens", "64", "--ablation-tokens", "64", "--induction-seqs", "1")
    cases += [
        h(BIG_ID, "ckpt.safetensors", "--data", "data-big-id", message=BIG_ID_MSG.replace("train_", "val_")),
        h(VOCAB, "small-vocab.safetensors", "--data", "data",
          message="--data data: token id 50256 does not fit the model's vocab_size 128 "
                  "(the checkpoint was trained on a smaller vocabulary)"),
        h(MISSING, "ckpt.safetensors", "--text", "missing.txt", message="--text missing.txt: no such file"),
        h(DIRECTORY, "ckpt.safetensors", "--text", "folder",
          message="--text folder: is a directory, expected a text file"),
        h(EMPTY, "ckpt.safetensors", "--text", "empty.txt",
          message="--text empty.txt: 0 tokens of text; at least 3 are needed"),
        h(NON_UTF8, "ckpt.safetensors", "--text", "latin1.txt", message="--text latin1.txt: not UTF-8 text"),
        h(LONG, *ok, "--seq-len", "64", message="--seq-len 64: longer than the model's context of 32"),
        h(NOT_POSITIVE, *ok, "--tokens", "0", message="--tokens 0: must be positive"),
        h(NOT_POSITIVE, *ok, "--seq-len", "-1", message="--seq-len -1: must be positive"),
        h(NOT_POSITIVE, *ok, "--induction-seqs", "0", message="--induction-seqs 0: must be positive"),
        h(UNWRITABLE, *ok, *small, "--json", "notes.txt/heads.json",
          message="--json notes.txt/heads.json: cannot write there (notes.txt is not a directory)"),
        h(UNWRITABLE, *ok, *small, "--png", "notes.txt/heads.png",
          message="--png notes.txt/heads.png: cannot write there (notes.txt is not a directory)"),
    ]
    return cases


def _inspect_attention() -> list[Case]:
    def a(kind, *args, message, process=False, pending=None):
        return Case("inspect attention", kind, ("inspect", "attention", *args), message, process=process,
                    pending=pending)

    lh = ("--layer", "0", "--head", "0", "--device", "cpu")
    cases = [a(kind, ckpt, "the cat", *lh, message=msg) for kind, ckpt, msg in BAD_CKPTS]
    cases += [
        a(VOCAB, "small-vocab.safetensors", "the cat", *lh,
          message="TEXT: token id 3797 does not fit the model's vocab_size 128"),
        a(LONG, "ckpt.safetensors", "hi " * 60, *lh, message="TEXT: 61 tokens, more than the model's context of 32"),
        a(EMPTY, "ckpt.safetensors", "", *lh, message="TEXT: empty, nothing to attend to"),
        a(NON_UTF8, "ckpt.safetensors", NON_UTF8_ARG, *lh, process=True,
          message="TEXT: not valid UTF-8"),
        a(NOT_POSITIVE, "ckpt.safetensors", "the cat", "--layer", "-1", "--head", "0", "--device", "cpu",
          message="--layer -1: the model has layers 0..1"),
        a(NOT_POSITIVE, "ckpt.safetensors", "the cat", "--layer", "0", "--head", "-1", "--device", "cpu",
          message="--head -1: the model has heads 0..1"),
        a(UNWRITABLE, "ckpt.safetensors", "the cat", *lh, "--png", "notes.txt/attn.png",
          message="notes.txt/attn.png: could not write (notes.txt is not a directory)"),
    ]
    return cases


def _convert() -> list[Case]:
    def f(kind, *args, message):
        return Case("convert from-hf", kind, ("convert", "from-hf", *args), message)

    def t(kind, *args, message):
        return Case("convert to-hf", kind, ("convert", "to-hf", *args), message)

    return [
        f(MISSING, "missing.safetensors", "out.safetensors", message="missing.safetensors: no such file or directory"),
        f(DIRECTORY, "folder", "out.safetensors", message="folder: no model.safetensors in this directory"),
        f(EMPTY, "empty.safetensors", "out.safetensors",
          message="empty.safetensors: empty file, expected a .safetensors checkpoint"),
        f(TRUNCATED, "truncated.safetensors", "out.safetensors", message=f"truncated.safetensors: {TRUNC}"),
        f(FOREIGN, "foreign.safetensors", "out.safetensors",
          message="foreign.safetensors: not a GPT-2 checkpoint (no wte/wpe weights)"),
        f(PICKLE, "pickle.pt", "out.safetensors", message=f"pickle.pt: {PICKLED}"),
        f(CORRUPT, "hf-bad-config", "out.safetensors", message="hf-bad-config/config.json: not valid JSON"),
        f(FOREIGN, "hf-relu", "out.safetensors", message=RELU),
        f(PICKLE, "hf-pickle", "out.safetensors",
          message="hf-pickle: only pytorch_model.bin (a pickle) found; need model.safetensors"),
        f(UNWRITABLE, "hf", "notes.txt/out.safetensors",
          message="notes.txt/out.safetensors: could not write (notes.txt is not a directory)"),
        f(UNWRITABLE, "hf", "folder", message="folder: could not write (Is a directory)"),
        *[t(kind, ckpt, "out-hf", message=msg) for kind, ckpt, msg in BAD_CKPTS],
        t(UNWRITABLE, "small-vocab.safetensors", "notes.txt/hf",
          message="notes.txt/hf: cannot create directory (Not a directory)"),
        t(UNWRITABLE, "small-vocab.safetensors", "notes.txt", message="notes.txt: exists and is not a directory"),
        *_sharded("convert from-hf", ("convert", "from-hf"), ("out.safetensors",)),
    ]


SHARD_INDEX = "model.safetensors.index.json"
NOT_A_SHARD_NAME = "is not a .safetensors file name in this directory (no folders, no ..)"
SHARDED_CASES = (
    ("hf-shard-bad-index", f"hf-shard-bad-index/{SHARD_INDEX}: not valid JSON"),
    ("hf-shard-list-index",
     f"hf-shard-list-index/{SHARD_INDEX}: not a JSON object (expected a safetensors shard index with a weight_map)"),
    ("hf-shard-no-map", f"hf-shard-no-map/{SHARD_INDEX}: no weight_map (tensor name -> shard file name)"),
    ("hf-shard-missing",
     f"hf-shard-missing/model-00002-of-00003.safetensors: no such file ({SHARD_INDEX} names it as a shard)"),
    ("hf-shard-no-tensor",
     f"hf-shard-no-tensor/{SHARD_INDEX}: tensor names do not match a GPT-2 of this shape (['transformer.ln_f.bias'])"),
    ("hf-shard-wrong-file", "hf-shard-wrong-file/model-00001-of-00003.safetensors: no tensor 'transformer.ln_f.weight', "
                            f"though {SHARD_INDEX} puts it there"),
    ("hf-shard-escape", f"hf-shard-escape/{SHARD_INDEX}: shard '../hf/model.safetensors' {NOT_A_SHARD_NAME}"),
    ("hf-shard-pickle", f"hf-shard-pickle/{SHARD_INDEX}: shard 'pytorch_model-00001-of-00001.bin' {NOT_A_SHARD_NAME}"),
)


def _sharded(command: str, before: tuple[str, ...], after: tuple[str, ...]) -> list[Case]:
    """Weights sharded as transformers saves them (hf-sharded is read), each index or shard spoiled."""
    return [Case(command, SHARDED, (*before, src, *after), message) for src, message in SHARDED_CASES]




def _demo() -> list[Case]:
    def d(kind, *args, message, pending=None):
        return Case("demo", kind, ("demo", *args), message, pending=pending)

    return [
        d(NOT_POSITIVE, "--out", "out/demo", "--steps", "0", message="--steps 0: must be positive"),
        d(NOT_POSITIVE, "--out", "out/demo", "--minutes", "-1", message="--minutes -1.0: must be positive"),
        d(NOT_POSITIVE, "--out", "out/demo", "--corpus-size", "0",
          message="--corpus-size '0': must be more than zero bytes"),
        d(UNWRITABLE, "--out", "notes.txt/demo",
          message="--out notes.txt/demo: cannot create the directory (Not a directory)"),
        d(UNWRITABLE, "--out", "notes.txt",
          message="--out notes.txt: exists and is not a directory"),
    ]


def _output_policy() -> list[Case]:
    """Every command that writes files, pointed at what it must not write over."""
    def c(command, kind, *args, message):
        return Case(command, kind, tuple(args), message)

    ok_eval = ("eval", "ckpt.safetensors", "--data", "data", *EVAL)
    heads = ("inspect", "heads", "ckpt.safetensors", "--device", "cpu")
    attn = ("inspect", "attention", "ckpt.safetensors", "the cat", "--layer", "0", "--head", "0", "--device", "cpu")
    tiny = ("--preset", "tiny.toml", "--device", "cpu")
    exists = "already exists; pass --force to replace it"
    own = "write to another path"
    return [
        c("tokenize", EXISTS, "tokenize", "notes.txt", "-o", "data", "--workers", "1",
          message="-o data: already holds files (meta.json, source, train_000000.bin, …); use --force to replace its data"),
        c("tokenize", OWN_FILE, "tokenize", "notes.txt", "-o", "run-ok", "--force", "--workers", "1",
          message="-o run-ok: is a run dir (written by `gpt2 train`); choose another -o"),
        c("train", EXISTS, "train", *tiny, "--data", "data", "--out", "run-ok",
          message="--out run-ok: already holds a run's checkpoint; pass --resume to continue it, or choose another --out"),
        c("train", OWN_FILE, "train", *tiny, "--data", "data", "--out", "data",
          message="--out data: is a data dir (written by `gpt2 tokenize`); choose another --out"),
        c("train", EXISTS, "train", *tiny, "--data", "data", "--out", "hf",
          message="--out hf: holds a config.json that is not a run's; choose another --out"),
        c("eval", EXISTS, *ok_eval, "--json", "notes.txt", message=f"--json notes.txt: {exists}"),
        c("eval", IS_INPUT, *ok_eval, "--json", "ckpt.safetensors", "--force",
          message="--json ckpt.safetensors: is the input ckpt.safetensors itself; write to another path"),
        c("eval", IS_INPUT, "eval", "link.safetensors", "--data", "data", *EVAL, "--json", "ckpt.safetensors", "--force",
          message="--json ckpt.safetensors: is the same file as the input link.safetensors (through a link); "
                  "write to another path"),
        c("eval", IS_INPUT, "eval", "hard.safetensors", "--data", "data", *EVAL, "--json", "ckpt.safetensors", "--force",
          message="--json ckpt.safetensors: is the same file as the input hard.safetensors (through a link); "
                  "write to another path"),
        c("eval", IS_INPUT, *ok_eval, "--json", "data/meta.json", "--force",
          message="--json data/meta.json: is the input data/meta.json itself; write to another path"),
        c("eval", OWN_FILE, *ok_eval, "--json", "run-ok/ckpt.optim.safetensors", "--force",
          message=f"--json run-ok/ckpt.optim.safetensors: is a run dir's own ckpt.optim.safetensors, "
                  f"written only by `gpt2 train`; {own}"),
        c("inspect heads", EXISTS, *heads, "--data", "data", "--png", "notes.txt", message=f"--png notes.txt: {exists}"),
        c("inspect heads", IS_INPUT, *heads, "--text", "notes.txt", "--json", "notes.txt", "--force",
          message="--json notes.txt: is the input notes.txt itself; write to another path"),
        c("inspect heads", OWN_FILE, *heads, "--text", "notes.txt", "--json", "data/meta.json", "--force",
          message=f"--json data/meta.json: is a data dir's own meta.json, written only by `gpt2 tokenize`; {own}"),
        c("inspect heads", EXISTS, *heads, "--text", "notes.txt", "--json", "out.json", "--png", "out.json",
          message="--png out.json: also given as --json; give each output its own path"),
        c("inspect heads", OWN_FILE, "inspect", "heads", "run-ok/ckpt.safetensors", "--device", "cpu",
          "--text", "notes.txt", "--png", "run-ok/heads.json", "--force",
          message=f"--png run-ok/heads.json: is the heads.json this command also writes there; {own}"),
        c("inspect heads", IS_INPUT, "inspect", "heads", "run-ok/ckpt.safetensors", "--device", "cpu",
          "--text", "run-ok/heads.json",
          message="run-ok/heads.json: is an input, but this command writes its own heads.json there; "
                  "give a copy of it at another path"),
        c("inspect attention", EXISTS, *attn, "--png", "notes.txt", message=f"--png notes.txt: {exists}"),
        c("inspect attention", IS_INPUT, *attn, "--png", "ckpt.safetensors", "--force",
          message="--png ckpt.safetensors: is the input ckpt.safetensors itself; write to another path"),
        c("inspect attention", OWN_FILE, *attn, "--png", "run-ok/ckpt.optim.safetensors", "--force",
          message=f"--png run-ok/ckpt.optim.safetensors: is a run dir's own ckpt.optim.safetensors, "
                  f"written only by `gpt2 train`; {own}"),
        c("report", EXISTS, "report", "run-ok", "-o", "notes.txt", message=f"-o notes.txt: {exists}"),
        c("report", EXISTS, "report", "run-ok", "-o", "run-ok/report-loss.png",
          message=f"-o run-ok/report-loss.png: {exists}"),
        c("report", IS_INPUT, "report", "run-ok", "-o", "run-ok/heads.json", "--force",
          message="-o run-ok/heads.json: is the input run-ok/heads.json itself; write to another path"),
        c("report", IS_INPUT, "report", "run-ok", "-o", "run-ok/metrics.jsonl", "--force",
          message="-o run-ok/metrics.jsonl: is the input run-ok/metrics.jsonl itself; write to another path"),
        c("report", OWN_FILE, "report", "run-ok", "-o", "run-truncated/ckpt.safetensors", "--force",
          message=f"-o run-truncated/ckpt.safetensors: is a run dir's own ckpt.safetensors, "
                  f"written only by `gpt2 train`; {own}"),
        c("convert from-hf", EXISTS, "convert", "from-hf", "hf", "notes.txt", message=f"notes.txt: {exists}"),
        c("convert from-hf", IS_INPUT, "convert", "from-hf", "hf", "hf/model.safetensors", "--force",
          message="hf/model.safetensors: is the input hf/model.safetensors itself; write to another path"),
        c("convert from-hf", OWN_FILE, "convert", "from-hf", "hf", "run-ok/ckpt.optim.safetensors", "--force",
          message=f"run-ok/ckpt.optim.safetensors: is a run dir's own ckpt.optim.safetensors, "
                  f"written only by `gpt2 train`; {own}"),
        c("convert to-hf", EXISTS, "convert", "to-hf", "small-vocab.safetensors", "hf-pickle",
          message="hf-pickle: already holds files (pytorch_model.bin); pass --force to replace its config.json and "
                  "model.safetensors, or choose an empty directory"),
        c("convert to-hf", IS_INPUT, "convert", "to-hf", "ours-in-dir/model.safetensors", "ours-in-dir", "--force",
          message="ours-in-dir/model.safetensors: is the input ours-in-dir/model.safetensors itself; "
                  "write to another path"),
        c("convert to-hf", OWN_FILE, "convert", "to-hf", "small-vocab.safetensors", "run-ok", "--force",
          message="run-ok: is a run dir (written by `gpt2 train`); choose another directory"),
        c("convert to-hf", OWN_FILE, "convert", "to-hf", "small-vocab.safetensors", "data", "--force",
          message="data: is a data dir (written by `gpt2 tokenize`); choose another directory"),
        c("demo", OWN_FILE, "demo", "--out", "run-ok",
          message="--out run-ok: is a run dir (written by `gpt2 train`); choose another --out"),
        # {pid}: the process holding the lock (the test's `lock_holder`).
        c("tokenize", LOCKED, "tokenize", "notes.txt", "-o", "data-locked", "--force", "--workers", "1",
          message="-o data-locked: in use by another `gpt2 tokenize` (pid {pid}); "
                  "wait for it to finish or choose another -o"),
        c("train", LOCKED, "train", *tiny, "--data", "data", "--out", "run-locked", "--resume",
          message="--out run-locked: in use by another `gpt2 train` (pid {pid}); "
                  "wait for it to finish or choose another --out"),
    ]


NAN_MSG = ("nan.safetensors: tensor transformer.h.0.mlp.c_fc.weight holds 1 non-finite value (NaN or inf); "
           "the weights are unusable (a diverged run? resume from an earlier checkpoint)")
OOM_TRAIN = ("not enough memory: training needs at least {total} (weights, gradients and AdamW state {state}, "
             "activations for {b} x 32 tokens {act}), cpu has <machine> free; {hint}")
OOM_FULL_LOGITS = ("not enough memory: training needs at least 1.5 TiB (weights, gradients and AdamW state 25.0 MiB, "
                   "activations for 100,000 x 32 tokens 6.1 GiB, full logits (--loss full) 1.5 TiB), cpu has <machine> "
                   "free; use --loss chunked (it never holds the whole logits), or a smaller --batch-size or --block-size")
SMALLER_BATCH = "use a smaller --batch-size or --block-size (--grad-accum keeps the tokens per step)"
SMALLER_MODEL = "use a smaller model (--preset, or --set model.n_layer / model.n_embd / model.block_size)"
OOM_DECODE = ("not enough memory: decoding needs at least 19.8 TiB (weights 6.2 MiB, KV cache for 100,000,000 x "
              "{pos} positions 1.5 TiB, logits 18.3 TiB), cpu has <machine> free; use a smaller --num-samples or "
              "--max-new-tokens")
NU = NON_UTF8_ARG


def _environment() -> list[Case]:
    """Issue 19's classes: numbers out of range, sizes past memory, NaN weights, names that are not UTF-8,
    JSON that is not an object, a damaged cache, thousands of shards."""
    tiny = ("--preset", "tiny.toml", "--device", "cpu", "--data", "data", "--out", "runs/e")
    gen = ("--ckpt", "ckpt.safetensors", "--device", "cpu", "--dtype", "fp32", "--seed", "1", "--max-new-tokens", "3")
    ev = ("--device", "cpu", "--dtype", "fp32", "--prompt-tokens", "8", "--suffix-tokens", "8")
    small_eval = ("--eval-tokens", "256", "--num-samples", "2", "--max-new-tokens", "8", "--extract-windows", "2")
    heads = ("--device", "cpu", "--tokens", "64", "--ablation-tokens", "32", "--induction-seqs", "1")
    lh = ("--layer", "0", "--head", "0", "--device", "cpu")
    finite = "must be a finite number"
    return [
        # -- numbers: finite, and within what the machine and the format can hold (gpt2cli.bounds)
        Case("tokenize", NOT_FINITE, ("tokenize", "notes.txt", "-o", "out/t", "--workers", "100000"),
             "--workers 100000: must be at most <machine> (4 per core, <machine> cores here)"),
        Case("tokenize", NOT_FINITE, ("tokenize", "notes.txt", "-o", "out/t", "--workers", "1", "--shard-tokens", "10"),
             "--shard-tokens 10: must be at least 1000 (smaller shards make thousands of files)"),
        Case("tokenize", NOT_FINITE, ("tokenize", "notes.txt", "-o", "out/t", "--workers", "1", "--val-fraction",
                                      "nan"), f"--val-fraction nan: {finite}"),
        Case("train", NOT_FINITE, ("train", *tiny, "--lr", "inf"), f"--lr inf: {finite}"),
        Case("train", NOT_FINITE, ("train", *tiny, "--set", "train.lr=nan"),
             "preset tiny.toml: train.lr: Input should be a finite number"),
        Case("train", NOT_FINITE, ("train", *tiny, "--seed", "-1"), "--seed -1: must be 0 or more"),
        Case("train", NOT_FINITE, ("train", *tiny, "--steps", "99999999999999999999"),
             "--steps 99999999999999999999: must be at most 9007199254740992"),
        Case("train", NOT_FINITE, ("train", *tiny, "--nproc", "100000"),
             "--nproc 100000: must be at most <machine> (4 per core, <machine> cores here)"),
        Case("train", NOT_FINITE, ("train", *tiny, "--loss", "fast"), "--loss fast: expected one of auto, chunked, full"),
        Case("train", NOT_FINITE, ("train", *tiny, "--set", "train.loss=fast"),
             "preset tiny.toml: train.loss: Input should be 'auto', 'chunked' or 'full'"),
        Case("generate", NOT_FINITE, ("generate", "hi", *gen, "--temperature", "inf"), f"--temperature inf: {finite}"),
        Case("generate", NOT_FINITE, ("generate", "hi", *gen, "--repetition-penalty", "inf"),
             f"--repetition-penalty inf: {finite}"),
        Case("generate", NOT_FINITE, ("generate", "hi", *gen, "--temperature", "1e-9"),
             "--temperature 1e-09: must be 0 (greedy) or at least 1e-06"),
        Case("generate", NOT_FINITE, ("generate", "hi", *gen, "--top-p", "nan"), f"--top-p nan: {finite}"),
        Case("eval", NOT_FINITE, ("eval", "ckpt.safetensors", "--data", "data", *ev, "--temperature", "nan"),
             f"--temperature nan: {finite}"),
        Case("eval", NOT_FINITE, ("eval", "ckpt.safetensors", "--data", "data", *ev, "--gap-margin", "1e309"),
             f"--gap-margin inf: {finite}"),
        Case("eval", NOT_FINITE, ("eval", "ckpt.safetensors", "--data", "data", *ev, "--seed", "-5"),
             "--seed -5: must be 0 or more"),
        Case("inspect heads", NOT_FINITE, ("inspect", "heads", "ckpt.safetensors", "--data", "data", "--device",
                                           "cpu", "--tokens", "99999999999999999999"),
             "--tokens 99999999999999999999: must be at most 9007199254740992"),
        Case("inspect attention", NOT_FINITE, ("inspect", "attention", "ckpt.safetensors", "the cat", "--layer",
                                               "1e309", "--head", "0"),
             "gpt2 inspect attention: Invalid value for '--layer': Input should be a valid integer, unable to "
             "parse string as an integer (see gpt2 inspect attention -h)"),
        Case("demo", NOT_FINITE, ("demo", "--out", "out/demo", "--minutes", "inf"), f"--minutes inf: {finite}"),
        # -- sizes past the machine's memory: refused with the figures before anything is allocated
        Case("train", MEMORY, ("train", *tiny, "--batch-size", "100000000"),
             OOM_TRAIN.format(total="6.0 TiB", state="25.0 MiB", b="100,000,000", act="6.0 TiB", hint=SMALLER_BATCH)),
        Case("train", MEMORY, ("train", *tiny, "--set", "model.block_size=1000000000"),
             OOM_TRAIN.format(total="476.9 GiB", state="476.9 GiB", b="2", act="128.0 KiB", hint=SMALLER_MODEL)),
        Case("train", MEMORY, ("train", *tiny, "--loss", "full", "--batch-size", "100000"), OOM_FULL_LOGITS),
        Case("generate", MEMORY, ("generate", "hi", *gen[:-1], "256", "--num-samples", "100000000"),
             OOM_DECODE.format(pos=32)),
        Case("eval", MEMORY, ("eval", "ckpt.safetensors", "--data", "data", *ev, "--num-samples", "100000000"),
             OOM_DECODE.format(pos=32)),
        # -- weights that are NaN or inf: refused at load, naming the tensor
        Case("generate", NAN_WEIGHTS, ("generate", "hi", "--ckpt", "nan.safetensors", *gen[2:]), NAN_MSG),
        Case("eval", NAN_WEIGHTS, ("eval", "nan.safetensors", "--data", "data", *ev), NAN_MSG),
        Case("inspect heads", NAN_WEIGHTS, ("inspect", "heads", "nan.safetensors", "--data", "data", *heads), NAN_MSG),
        Case("inspect attention", NAN_WEIGHTS, ("inspect", "attention", "nan.safetensors", "the cat", *lh), NAN_MSG),
        Case("convert to-hf", NAN_WEIGHTS, ("convert", "to-hf", "nan.safetensors", "out-hf"), NAN_MSG),
        Case("convert from-hf", NAN_WEIGHTS, ("convert", "from-hf", "hf-nan", "out.safetensors"),
             "hf-nan/model.safetensors: tensor transformer.ln_f.weight holds 3 non-finite values (NaN or inf); "
             "the weights are unusable (a diverged run? resume from an earlier checkpoint)"),
        # -- file names that are not UTF-8 (Linux allows any bytes): they work, or one line names them as \xNN
        Case("generate", NON_UTF8_NAME, ("generate", "hi", "--ckpt", f"{NU}.safetensors", "--device", "cpu",
                                         "--max-new-tokens", "3", "--seed", "1"),
             "using device: cpu, weights: float32", code=0),
        Case("generate", NON_UTF8_NAME, ("generate", "hi", "--ckpt", f"{NU}-missing.safetensors", *gen[2:]),
             "caf\\xe9-missing.safetensors: no such file"),
        Case("eval", NON_UTF8_NAME, ("eval", f"{NU}.safetensors", "--data", f"{NU}-data", *ev, *small_eval,
                                     "--json", f"out/{NU}.json"), f"wrote out/{NU}.json", code=0),
        Case("tokenize", NON_UTF8_NAME, ("tokenize", f"{NU}.txt", "-o", "out/t", "--workers", "1"),
             "caf\\xe9.txt: no such file or directory"),
        Case("train", NON_UTF8_NAME, ("train", "--preset", f"{NU}.toml", "--device", "cpu", "--data", f"{NU}-data",
                                      "--out", f"runs/{NU}", "--steps", "2"),
             f"step 2: saved runs/{NU}/ckpt.safetensors", code=0),
        Case("inspect model", NON_UTF8_NAME, ("inspect", "model", f"{NU}-missing.safetensors"),
             "caf\\xe9-missing.safetensors: no such file"),
        Case("inspect heads", NON_UTF8_NAME, ("inspect", "heads", f"{NU}.safetensors", "--data", f"{NU}-data",
                                              *heads, "--png", f"out/{NU}.png"), f"wrote out/{NU}.png", code=0),
        Case("inspect attention", NON_UTF8_NAME, ("inspect", "attention", f"{NU}-missing.safetensors", "the cat", *lh),
             "caf\\xe9-missing.safetensors: no such file"),
        Case("convert to-hf", NON_UTF8_NAME, ("convert", "to-hf", f"{NU}-missing.safetensors", "out-hf"),
             "caf\\xe9-missing.safetensors: no such file"),
        Case("convert from-hf", NON_UTF8_NAME, ("convert", "from-hf", f"{NU}-hf", "out.safetensors"),
             "caf\\xe9-hf: no such file or directory"),
        Case("demo", NON_UTF8_NAME, ("demo", "--out", f"notes.txt/{NU}"),
             "--out notes.txt/caf\\xe9: cannot create the directory (Not a directory)"),
        # -- JSON that parses but is not an object
        Case("convert from-hf", NOT_OBJECT, ("convert", "from-hf", "hf-list-config", "out.safetensors"),
             "hf-list-config/config.json: not a JSON object (expected a Hugging Face GPT2Config)"),
        Case("train", NOT_OBJECT, ("train", *tiny[:4], "--data", "data-list-meta", "--out", "runs/e"),
             "data-list-meta/meta.json: not a JSON object (expected a data dir's meta.json)"),
        # -- a damaged n-gram cache: only a cache, so it is rebuilt and eval goes on
        Case("eval", BAD_CACHE, ("eval", "ckpt.safetensors", "--data", "data-bad-index", *ev, *small_eval),
             "note: n-gram index data-bad-index/.ngram_index/<machine>: damaged (JSONDecodeError: Expecting "
             "property name enclosed in double quotes: line 1 column 2 (char 1)); rebuilt it", code=0),
        # -- 2,000 shards with at most 128 open files: shards are mapped on demand, a few at a time
        Case("train", MANY_SHARDS, ("train", "--preset", "tiny.toml", "--device", "cpu", "--data", "data-many",
                                    "--out", "runs/many", "--steps", "2"),
             "step 2: saved runs/many/ckpt.safetensors", code=0, process=True, nofile=128),
    ]


CASES: list[Case] = [
    *_tokenize(), *_train(), *_generate(), *_eval(), *_inspect_model(), *_inspect_heads(),
    *_inspect_attention(), *_convert(), *_demo(), *_output_policy(), *_environment(),
]
COMMANDS = ("tokenize", "train", "generate", "eval", "inspect model", "inspect heads", "inspect attention",
            "convert from-hf", "convert to-hf", "demo", "report")


# -- the doc's table ---------------------------------------------------------------------------
def _code(text: str) -> str:
    """A Markdown code span that may hold backticks and pipes."""
    text = text.replace("|", "\\|")
    return f"`` {text} ``"


def _shown(arg: str) -> str:
    if NON_UTF8_ARG in arg:
        return arg.replace(NON_UTF8_ARG, "$'caf\\xe9'")
    if " " in arg or not arg:
        return f'"{arg[:12]}…"' if len(arg) > 12 else f'"{arg}"'
    return arg


def render_table() -> str:
    # First the coverage at a glance (rows per case, columns per command), then every row.
    lines = [
        "| Case | " + " | ".join(COMMANDS) + " |",
        "|---|" + "---|" * len(COMMANDS),
    ]
    for kind in KINDS:
        counts = [sum(1 for c in CASES if c.kind == kind and c.command == cmd) for cmd in COMMANDS]
        lines.append(f"| {kind} | " + " | ".join(str(n) if n else "—" for n in counts) + " |")
    lines += [
        "",
        "| Command | Case | Command line | What the user sees | Exit |",
        "|---|---|---|---|---|",
    ]
    for c in CASES:
        line = c.message if c.code == 0 else f"error: {c.message}"
        line = line.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        kind = c.kind + (" (pending)" if c.pending else "")
        lines.append(f"| {c.command} | {kind} | {_code('gpt2 ' + ' '.join(map(_shown, c.args)))} | {_code(line)} | {c.code} |")
    return "\n".join(lines) + "\n"


def _doc_with_table(doc: str) -> str:
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{render_table()}{END}{tail}"


# -- the tests ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-input")
    build_fixtures(root)
    return root


def _process_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONPATH": str(REPO / "src")}


def _limit_files(n: int):
    def limit():
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (n, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    return limit


_DIGESTS: dict[tuple, str] = {}


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under root (n-gram caches left out: rebuilding one is their point).

    A file whose (size, mtime, inode) is unchanged is not read again: the matrix runs ~200 cases.
    """
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".ngram_index"]
        for name in dirnames:
            out[os.path.join(dirpath, name)] = "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                out[path] = f"link -> {os.readlink(path)}"
                continue
            st = os.stat(path)
            key = (path, st.st_size, st.st_mtime_ns, st.st_ino)
            if key not in _DIGESTS:
                with open(path, "rb") as fh:
                    _DIGESTS[key] = hashlib.file_digest(fh, "sha256").hexdigest()
            out[path] = _DIGESTS[key]
    return out


def assert_kept(before: dict[str, str], after: dict[str, str], code: int) -> None:
    changed = sorted(p for p in before if after.get(p) != before[p])
    assert not changed, f"pre-existing files changed or removed: {changed[:5]}"
    if code != 0:
        added = sorted(set(after) - set(before))
        assert not added, f"left behind: {added[:5]}"


@pytest.fixture(scope="module")
def process_results(bad_files) -> dict[str, subprocess.CompletedProcess]:
    """The real-process cases, started all at once (each pays Python + torch start-up)."""
    procs = {}
    before = snapshot(bad_files)
    for c in CASES:
        if c.process:
            argv = [sys.executable, "-m", "gpt2cli", *(os.fsencode(a) for a in c.args)]
            procs[c.id] = subprocess.Popen(argv, cwd=bad_files, env=_process_env(),
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           preexec_fn=_limit_files(c.nofile) if c.nofile else None)
    results = {"__before__": before}
    for key, p in procs.items():
        out, err = p.communicate(timeout=300)
        results[key] = subprocess.CompletedProcess(p.args, p.returncode, out.decode(errors="replace"),
                                                   err.decode(errors="replace"))
    results["__after__"] = snapshot(bad_files)
    return results


def _params():
    for c in CASES:
        marks = [pytest.mark.xdist_group("bad-input")]
        if c.pending:
            marks.append(pytest.mark.xfail(strict=True, reason=c.pending))
        yield pytest.param(c, id=c.id, marks=marks)


@pytest.fixture(scope="module")
def lock_holder(bad_files):
    """A process holding the locks of data-locked/ and run-locked/ (as a running tokenize/train would)."""
    code = (
        "import sys\nfrom gpt2cli.outputs import DirLock\n"
        "a = DirLock.acquire('data-locked', flag='-o', command='tokenize')\n"
        "b = DirLock.acquire('run-locked', flag='--out', command='train')\n"
        "print('locked', flush=True)\nsys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=bad_files, env=_process_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield proc.pid
    proc.stdin.close()  # it releases the locks and exits
    proc.wait(timeout=60)


@pytest.mark.parametrize("case", list(_params()))
def test_bad_input(case: Case, bad_files, request):
    message = case.message
    if "{pid}" in message:
        message = message.replace("{pid}", str(request.getfixturevalue("lock_holder")))
    if case.process:
        results = request.getfixturevalue("process_results")
        r = results[case.id]
        code, out, err = r.returncode, r.stdout, r.stderr
        # The process cases ran side by side: all of them together changed nothing.
        assert_kept(results["__before__"], results["__after__"], min(c.code for c in CASES if c.process))
    else:
        before = snapshot(bad_files)
        r = run_cli(*case.args, cwd=bad_files)
        code, out, err = r.code, r.out, r.err
        assert_kept(before, snapshot(bad_files), case.code)
    assert not (bad_files / SENTINEL).exists(), "a pickle was loaded"
    assert "Traceback" not in err, err
    if case.code == 0:  # accepted with a note
        assert code == 0, err
        assert any(_matches(case.message, line) for line in err.splitlines()) and out.strip(), err
        return
    assert code == case.code, err
    assert err.endswith("\n") and err.count("\n") == 1 and _matches(f"error: {message}", err[:-1]), err


def _matches(expected: str, line: str) -> bool:
    """The line exactly, a <machine> in it standing for any figure of the machine."""
    if MACHINE not in expected:
        return line == expected
    pattern = ".+?".join(re.escape(part) for part in expected.split(MACHINE))
    return re.fullmatch(pattern, line) is not None


def test_every_message_names_its_input():
    """Each line names the file or flag it is about (or the positional argument's name)."""
    for c in CASES:
        named = [a for a in c.args if a not in c.command.split() and a not in ("cpu", "fp32")]
        named = [a for a in named if not a.lstrip("-").replace(".", "").isdigit()]
        named += [shown_path(a) for a in named]  # a name that is not UTF-8 is shown as \\xNN
        if c.code == 0:  # accepted: the line is the note or output that shows it worked
            continue
        assert any(a in c.message for a in named) or c.message.split(":")[0] in ("PROMPT", "TEXT", "using prompt"), c


def test_matrix_covers_every_command_and_kind():
    assert {c.command for c in CASES} == set(COMMANDS)
    assert {c.kind for c in CASES} == set(KINDS)
    assert len({c.id for c in CASES}) == len(CASES), "two cases with the same id"


def _disk_full(tensors, filename, metadata=None):
    """safetensors' save_file on a full disk: some bytes written, then its own error type."""
    from safetensors import SafetensorError

    Path(filename).write_bytes(b"partial")
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


@pytest.mark.xdist_group("bad-input")
def test_disk_full_while_saving_keeps_the_previous_files(bad_files, tmp_path, monkeypatch):
    """The save fails with one line naming the file; the previous checkpoint stays byte for byte."""
    import gpt2cli.checkpoint

    ckpt = tmp_path / "ckpt.safetensors"
    shutil.copy(bad_files / "small-vocab.safetensors", ckpt)
    before = ckpt.read_bytes()
    monkeypatch.setattr(gpt2cli.checkpoint, "save_file", _disk_full)
    with pytest.raises(UserError) as err:
        save_checkpoint(tiny_model(1, vocab_size=128), ckpt, step=9)
    assert str(err.value).startswith(f"{ckpt}: could not write (") and "No space left" in str(err.value)
    assert ckpt.read_bytes() == before and sorted(tmp_path.iterdir()) == [ckpt]

    # to-hf writes through checkpoint.save_safetensors: the save_file patched above.
    r = run_cli("convert", "to-hf", ckpt, tmp_path / "hf")
    assert r.code == 2 and r.err.startswith(f"error: {tmp_path / 'hf' / 'model.safetensors'}: could not write (")
    assert r.err.count("\n") == 1 and not (tmp_path / "hf").exists()  # the folder it made goes too


def test_doc_lists_every_case():
    doc = DOC.read_text(encoding="utf-8")
    assert BEGIN in doc and END in doc
    assert doc == _doc_with_table(doc), "docs/bad-input.md is out of date: run python tests/test_bad_input_matrix.py"


if __name__ == "__main__":  # python tests/test_bad_input_matrix.py: rewrite the doc's table
    DOC.write_text(_doc_with_table(DOC.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote the table of {len(CASES)} cases into {DOC}")
