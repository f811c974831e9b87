"""Thousands of shards under a low open-files limit: shards are mapped on demand, a bounded number at a time.

The commands run in a child process whose RLIMIT_NOFILE is lowered to 128
(fewer than the 2,000 shards); before shards were opened lazily, reading
them all ended in EMFILE ("Too many open files").
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

from gpt2cli.data.reader import MAX_OPEN_SHARDS, ShardReader, read_tokens
from gpt2cli.tokenizer import EOT_ID
from tests.conftest import REPO
from tests.test_reader import write_split_data

N_SHARDS = 2000
LIMIT = 128
PRESET = """\
[model]
n_layer = 1
n_head = 2
n_embd = 16
block_size = 32
[train]
steps = 2
batch_size = 4
block_size = 32
eval_every = 2
eval_batches = 1
save_every = 2
sample_prompts = []
"""


def _many_shards(root):
    rng = np.random.default_rng(0)
    train = []
    for _ in range(N_SHARDS):
        shard = rng.integers(0, 1000, size=24)
        shard[-1] = EOT_ID  # one short document per shard
        train.append(shard)
    val = [rng.integers(0, 1000, size=400)]
    return write_split_data(root / "data", {"train": train, "val": val})


def test_reader_keeps_a_bounded_number_of_shards_open(tmp_path):
    data = _many_shards(tmp_path)
    reader = ShardReader(data, "train", batch_size=16, block_size=100, seed=0)
    whole = read_tokens(data, "train")
    assert len(whole) == 24 * N_SHARDS
    for k in range(20):
        x, y = reader.batch(k)
        for row, start in zip(x.numpy(), reader.starts(k), strict=True):  # windows span 5 shards each
            assert np.array_equal(row, whole[start : start + 100])
        assert len(reader._shards._maps) <= MAX_OPEN_SHARDS


def test_commands_run_on_2000_shards_under_a_low_open_files_limit(tmp_path):
    _many_shards(tmp_path)
    (tmp_path / "tiny.toml").write_text(PRESET, encoding="utf-8")
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_NOFILE, ({LIMIT}, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        from gpt2cli.cli.app import main
        for args in (
            ["train", "--preset", "tiny.toml", "--data", "data", "--out", "run", "--device", "cpu"],
            ["eval", "run/ckpt.safetensors", "--data", "data", "--device", "cpu", "--eval-tokens", "256",
             "--num-samples", "2", "--max-new-tokens", "4", "--extract-windows", "2", "--prompt-tokens", "4",
             "--suffix-tokens", "4", "--json", "eval.json"],
            ["inspect", "heads", "run/ckpt.safetensors", "--data", "data", "--device", "cpu", "--tokens", "64",
             "--ablation-tokens", "32", "--induction-seqs", "1"],
        ):
            try:
                main(args)
            except SystemExit as exit:
                if exit.code:
                    sys.exit(f"{{args[0]}} exited {{exit.code}}")
    """)
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    r = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "eval.json").is_file() and "Traceback" not in r.stderr
