"""The machine's refusals as one line (exit 2), and bugs as one line naming a crash report (exit 1).

Each error is raised where a real one would surface (a command's library call,
a shard write), so the test goes through the same top-level handler a user
meets; a full disk is simulated here, the real small file system is another test's.
"""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import pytest
import torch

import gpt2cli.model.summary
from gpt2cli.data.writer import ShardWriter
from gpt2cli.errors import environment_message
from tests.conftest import run_cli


def _raiser(exc: BaseException):
    def boom(*args, **kwargs):
        raise exc

    return boom


CASES = [
    (OSError(errno.ENOSPC, "No space left on device", "out/x.bin"),
     "out/x.bin: no space left on the device; free some space or write somewhere else, then run again"),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/x"),
     "/mnt/ro/x: read-only file system; write somewhere else"),
    (PermissionError(errno.EACCES, "Permission denied", "secret"),
     "secret: permission denied; check the permissions or choose another path"),
    (PermissionError(errno.EPERM, "Operation not permitted", "f"),
     "f: operation not permitted; check the permissions or choose another path"),
    (OSError(errno.EMFILE, "Too many open files", "d/train_000001.bin"),
     "d/train_000001.bin: too many open files; raise the limit (ulimit -n) and run again"),
    (OSError(errno.ENFILE, "Too many open files in system"),
     "too many open files on this system; close other programs or raise the system's limit"),
    (MemoryError(),
     "out of memory: use a smaller --batch-size, --block-size or model, or free memory, then run again"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                  "you tried to allocate 4294967296 bytes. Error code 12 (Cannot allocate memory)"),
     "out of memory (could not allocate 4.0 GiB): use a smaller --batch-size, --block-size or model, "
     "or free memory, then run again"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity"),
     "out of memory (could not allocate 20.00 GiB): use a smaller --batch-size, --block-size or model, "
     "or free memory, then run again"),
    (OSError("Error while serializing: I/O error: No space left on device (os error 28)"),
     "no space left on the device; free some space or write somewhere else, then run again"),
]


@pytest.mark.parametrize("exc, line", CASES, ids=[type(e).__name__ + str(getattr(e, "errno", "")) for e, _ in CASES])
def test_environment_errors_are_one_line_exit_2(exc, line, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(gpt2cli.model.summary, "describe_preset", _raiser(exc))
    r = run_cli("inspect", "model", "--preset", "tiny")
    assert (r.code, r.err) == (2, f"error: {line}\n")
    assert not (tmp_path / "cache").exists(), "no crash report for the machine's refusals"


def test_a_wrapped_os_error_keeps_its_meaning():
    try:
        try:
            raise OSError(errno.EROFS, "Read-only file system", "x")
        except OSError as inner:
            raise ValueError("could not save") from inner
    except ValueError as outer:
        assert environment_message(outer) == "x: read-only file system; write somewhere else"
    assert environment_message(ValueError("x")) is None
    assert environment_message(OSError(errno.ENOENT, "No such file", "x")) is None


def test_a_non_utf8_file_name_in_an_os_error_stays_one_printable_line():
    line = environment_message(OSError(errno.EACCES, "Permission denied", b"caf\xe9\n.txt"))
    assert line == "caf\\xe9\\n.txt: permission denied; check the permissions or choose another path"


def test_a_bug_is_one_line_naming_a_crash_report(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(gpt2cli.model.summary, "describe_preset", _raiser(KeyError("n_layer\nsecond line")))
    r = run_cli("inspect", "model", "--preset", "tiny")
    assert r.code == 1 and r.err.count("\n") == 1 and "Traceback" not in r.err
    assert r.err.startswith("internal error: KeyError: 'n_layer\\nsecond line' (details in ")
    report = Path(r.err.split("(details in ")[1].split(")")[0])
    assert report.parent == tmp_path / "cache" / "gpt2cli" / "crashes"
    text = report.read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in text and "command: gpt2 inspect model --preset tiny" in text


def test_crash_report_falls_back_to_the_temp_dir(monkeypatch, tmp_path):
    (tmp_path / "file").write_text("not a dir")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    monkeypatch.setattr(gpt2cli.model.summary, "describe_preset", _raiser(ValueError("boom")))
    r = run_cli("inspect", "model", "--preset", "tiny")
    assert r.code == 1 and f"(details in {tmp_path / 'tmp' / 'gpt2cli-crashes'}" in r.err


def test_disk_full_while_tokenizing_is_one_line_and_leaves_nothing(monkeypatch, tmp_path):
    """ENOSPC from a shard write: exit 2, one line, the input untouched, no shard or temporary left."""
    corpus = tmp_path / "in.txt"
    corpus.write_text("Once upon a time there was a cat.\n<|endoftext|>\nThe dog ran.\n" * 400, encoding="utf-8")
    before = hashlib.sha256(corpus.read_bytes()).hexdigest()
    real = ShardWriter.write

    def full(self, tokens):
        if self.tokens:
            raise OSError(errno.ENOSPC, "No space left on device", str(self._tmp))
        real(self, tokens)

    monkeypatch.setattr(ShardWriter, "write", full)
    out = tmp_path / "data"
    r = run_cli("tokenize", corpus, "-o", out, "--workers", "1", "--shard-tokens", "1000")
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "could not write (No space left on device); free some space" in r.err
    assert hashlib.sha256(corpus.read_bytes()).hexdigest() == before
    assert not out.exists() or list(out.iterdir()) == [], "no shard, temporary or meta.json left"


@pytest.mark.parametrize("raised", [MemoryError(), OSError(errno.EMFILE, "Too many open files")])
def test_pretrained_weights_the_machine_cannot_load_are_not_called_damaged(monkeypatch, tmp_path, raised):
    """--init-from's loader lets the machine's refusals through to the CLI's one line (as checkpoints do)."""
    from gpt2cli import weights_source
    from gpt2cli.config import ModelConfig
    from gpt2cli.model import GPT

    cfg = ModelConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=16)

    def refuse(*args, **kwargs):
        raise raised

    monkeypatch.setattr(weights_source, "safe_open", refuse)
    source = weights_source.WeightsSource(label="x", path=tmp_path / "model.safetensors", config=cfg, names={})
    with pytest.raises(type(raised)):
        weights_source.load_into(GPT(cfg), source)
    assert environment_message(raised) is not None
