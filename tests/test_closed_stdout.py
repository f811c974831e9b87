"""`gpt2 ... | head`: a reader of stdout that goes away ends the printing quietly, never the work.

Real processes, their stdout a pipe whose read end is closed before they
print anything (`| head -c 0`, certainly early): exit 0, no traceback, no
"Exception ignored", no crash report; commands that write files (tokenize,
train, eval) write them whole, the same bytes as with stdout open, also when
stderr goes into the same closed pipe (`2>&1 | head`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from gpt2cli.checkpoint import save_checkpoint
from tests.conftest import REPO, run_cli, tiny_model, tokenize_stories
from tests.test_outputs import TINY_PRESET


def closed_reader(*args, cwd: Path, stderr_too: bool = False) -> tuple[int, str]:
    """Run `gpt2 ARGS` with stdout a pipe nobody reads; (exit code, stderr)."""
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "PYTHONPATH": str(REPO / "src"),
        # Crash reports go here, to be sure there are none.
        "XDG_CACHE_HOME": str(cwd / "cache"), "TMPDIR": str(cwd / "tmp"),
    }
    (cwd / "tmp").mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2cli", *map(str, args)], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT if stderr_too else subprocess.PIPE,
    )
    proc.stdout.close()  # the reader is gone before the first line
    err = "" if stderr_too else proc.stderr.read().decode(errors="replace")
    if proc.stderr is not None:
        proc.stderr.close()
    code = proc.wait(timeout=300)
    for name in ("Traceback", "Exception ignored", "internal error", "Broken pipe", "BrokenPipe"):
        assert name not in err, err
    for crashes in (cwd / "cache" / "gpt2cli" / "crashes", cwd / "tmp" / "gpt2cli-crashes"):  # cli/crash.py
        assert not crashes.exists(), list(crashes.iterdir())
    return code, err


@pytest.mark.parametrize("args", [("--preset", "tiny"), ("--preset", "tiny", "--json")])
def test_printing_commands_end_quietly(tmp_path, args):
    code, err = closed_reader("inspect", "model", *args, cwd=tmp_path)
    assert (code, err) == (0, "")


def test_generate_stops_quietly(tmp_path):
    save_checkpoint(tiny_model(0, vocab_size=50257), tmp_path / "ckpt.safetensors")
    code, err = closed_reader("generate", "Once", "--ckpt", "ckpt.safetensors", "--device", "cpu",
                              "--max-new-tokens", "500", "--seed", "1", cwd=tmp_path)
    assert code == 0
    assert err.splitlines() == ["using device: cpu, weights: float32"]  # no timing line for a cut stream


def _files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


@pytest.mark.parametrize("stderr_too", [False, True])
def test_tokenize_writes_its_data_whole(tmp_path, stderr_too):
    args = ("tokenize", "--builtin-stories", "60KB", "--workers", "2", "--seed", "3")
    code, err = closed_reader(*args, "-o", "piped", cwd=tmp_path, stderr_too=stderr_too)
    assert code == 0, err
    assert run_cli(*args, "-o", tmp_path / "reference").code == 0
    piped, reference = _files(tmp_path / "piped"), _files(tmp_path / "reference")
    assert piped.keys() == reference.keys() and "meta.json" in piped
    for name in piped:
        if name.endswith(".bin") or name == "source":
            assert piped[name] == reference[name], name


def test_train_and_eval_write_their_files_whole(tmp_path, one_thread):
    tokenize_stories(tmp_path, "40KB")
    (tmp_path / "tiny.toml").write_text(TINY_PRESET)
    args = ("train", "--preset", "tiny.toml", "--data", "data", "--steps", "4", "--eval-every", "2", "--seed", "5")
    code, _ = closed_reader(*args, "--out", "piped", cwd=tmp_path, stderr_too=True)  # `2>&1 | head -n 1`
    assert code == 0
    assert run_cli(*args, "--out", "reference", cwd=tmp_path).code == 0
    for name in ("ckpt.safetensors", "ckpt.optim.safetensors"):
        with safe_open(str(tmp_path / "piped" / name), "pt") as a, safe_open(str(tmp_path / "reference" / name), "pt") as b:
            assert a.metadata()["step"] == b.metadata()["step"] == "4"
            assert a.keys() == b.keys()
            assert all(a.get_tensor(k).equal(b.get_tensor(k)) for k in a.keys() if "rng" not in k), name

    # eval --json -: its one output is stdout, but the copy kept beside the run is still written.
    code, err = closed_reader("eval", "piped/ckpt.safetensors", "--data", "data", "--eval-tokens", "256",
                              "--num-samples", "2", "--max-new-tokens", "8", "--extract-windows", "2",
                              "--prompt-tokens", "8", "--suffix-tokens", "8",
                              "--device", "cpu", "--json", "-", cwd=tmp_path)
    assert code == 0, err
    assert err.strip().splitlines()[-1] == f"wrote {tmp_path / 'piped' / 'eval.json'}"
    assert (tmp_path / "piped" / "eval.json").read_text(encoding="utf-8").startswith("{")
