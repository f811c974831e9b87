"""`gpt2 tokenize` from the command line: defaults, determinism, and every bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from gpt2cli.data import sources
from gpt2cli.data.meta import read_meta
from gpt2cli.data.shards import TokenizeOptions, run_tokenize
from gpt2cli.data.split import SplitRouter
from gpt2cli.data.stories import write_corpus
from tests.conftest import run_cli, run_cli_process


@pytest.fixture
def small_pieces(monkeypatch):
    monkeypatch.setattr(sources, "READ_BLOCK", 2048)
    monkeypatch.setattr(sources, "PIECE_BYTES", 4096)
    monkeypatch.setattr(sources, "MAX_PIECE_BYTES", 16384)


@pytest.fixture
def stories(tmp_path) -> Path:
    path = tmp_path / "stories.txt"
    write_corpus(path, 150_000, seed=1)
    return path


def final_files(out: Path) -> list[str]:
    """Files under their final names (meta.json, shards) in an output dir."""
    if not out.exists():
        return []
    return sorted(p.name for p in out.iterdir() if p.name == "meta.json" or p.suffix == ".bin")


def error_line(result) -> str:
    lines = result.err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.err
    assert "Traceback" not in result.err
    return lines[-1]


def test_defaults_chain_from_the_input_name(tmp_path, stories):
    result = run_cli("tokenize", "stories.txt", "--workers", "2", cwd=tmp_path)
    assert result.code == 0, result.err
    assert "using output dir data/stories (named after stories.txt" in result.err
    meta = read_meta(tmp_path / "data" / "stories")
    assert meta.documents["val"] >= 1 and meta.documents["train"] > 100
    assert "documents" in result.out and "tokens/s" in result.out and "MB/s" in result.out
    # gzipped and jsonl names lose every suffix
    (tmp_path / "more.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n{"text": "b"}\n'))
    result = run_cli("tokenize", "more.jsonl.gz", "--workers", "1", cwd=tmp_path)
    assert result.code == 0, result.err
    assert (tmp_path / "data" / "more" / "meta.json").is_file()


def test_workers_1_and_2_give_identical_files(tmp_path, stories, small_pieces):
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}"
        result = run_cli("tokenize", stories, "-o", out, "--workers", workers, "--shard-tokens", "4000", "--val-fraction", "0.05")
        assert result.code == 0, result.err
        outs.append(out)
    names = sorted(p.name for p in outs[0].iterdir())
    assert "meta.json" in names and len(names) > 8
    assert names == sorted(p.name for p in outs[1].iterdir())
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name


def test_json_summary_is_all_of_stdout(tmp_path, stories):
    result = run_cli("tokenize", stories, "-o", tmp_path / "out", "--workers", "1", "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    meta = read_meta(tmp_path / "out")
    assert summary["documents"] == meta.documents and summary["tokens"] == meta.tokens
    assert summary["bytes_in"] == stories.stat().st_size


def test_builtin_stories(tmp_path):
    result = run_cli("tokenize", "--builtin-stories", "300KB", "--workers", "1", cwd=tmp_path)
    assert result.code == 0, result.err
    assert "using output dir data/stories (named after built-in stories" in result.err
    meta = read_meta(tmp_path / "data" / "stories")
    assert meta.builtin_stories["bytes"] >= 300_000 and meta.sources[0].path == "source/stories.txt"


def test_force_replaces_old_data(tmp_path, stories):
    out = tmp_path / "out"
    assert run_cli("tokenize", stories, "-o", out, "--workers", "1", "--shard-tokens", "20000").code == 0
    (out / "notes.txt").write_text("mine")
    old = final_files(out)
    result = run_cli("tokenize", stories, "-o", out, "--workers", "1")
    assert result.code == 2
    assert error_line(result).startswith(f"error: -o {out}: already holds files (meta.json, notes.txt, train_000000.bin")
    assert final_files(out) == old  # refused: nothing touched
    result = run_cli("tokenize", stories, "-o", out, "--workers", "1", "--force")
    assert result.code == 0, result.err
    assert final_files(out) == ["meta.json", "train_000000.bin", "val_000000.bin"]
    assert (out / "notes.txt").read_text() == "mine"  # files that are not ours stay


def _bad_utf8(tmp: Path) -> list[str]:
    (tmp / "latin1.txt").write_bytes("fine\n<|endoftext|>\ncaf\xe9\n".encode("latin-1"))
    return ["latin1.txt", "--strict"]


def _nul(tmp: Path) -> list[str]:
    write_corpus(tmp / "a.txt", 60_000, seed=2)  # a good file first: its shards must be removed
    (tmp / "b.txt").write_bytes(b"text then \x00\x01\x02 binary")
    return ["a.txt", "b.txt"]


def _nul_gz(tmp: Path) -> list[str]:
    (tmp / "c.txt.gz").write_bytes(gzip.compress(b"ELF\x00\x00"))
    return ["c.txt.gz"]


def _empty(tmp: Path) -> list[str]:
    (tmp / "empty.txt").write_text("")
    return ["empty.txt"]


def _only_separators(tmp: Path) -> list[str]:
    (tmp / "seps.txt").write_text("<|endoftext|>\n\n<|endoftext|>\n  \n")
    return ["seps.txt"]


def _no_usable_files(tmp: Path) -> list[str]:
    (tmp / "corpus").mkdir()
    (tmp / "corpus" / "readme.md").write_text("x")
    (tmp / "corpus" / ".hidden.txt").write_text("x")
    return ["corpus"]


def _bad_gzip(tmp: Path) -> list[str]:
    (tmp / "x.txt.gz").write_bytes(b"not gzip at all")
    return ["x.txt.gz"]


def _truncated_gzip(tmp: Path) -> list[str]:
    (tmp / "t.txt.gz").write_bytes(gzip.compress(b"story " * 10000)[:-12])
    return ["t.txt.gz"]


def _bad_json(tmp: Path) -> list[str]:
    (tmp / "c.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
    return ["c.jsonl"]


def _missing_field(tmp: Path) -> list[str]:
    (tmp / "c.jsonl").write_text('{"body": "ok"}\n')
    return ["c.jsonl"]


BAD_INPUTS = [
    (lambda tmp: ["nope.txt"], "error: nope.txt: no such file or directory"),
    (_bad_utf8, "error: latin1.txt: not valid UTF-8 at byte 22 (drop --strict to replace bad bytes with U+FFFD)"),
    (_nul, "error: b.txt: binary file (NUL byte at offset 10), not text"),
    (_nul_gz, "error: c.txt.gz: binary file (NUL byte at offset 3), not text"),
    (_empty, "error: empty.txt: no documents (empty corpus)"),
    (_only_separators, "error: seps.txt: no documents (empty corpus)"),
    (_no_usable_files, "error: corpus: directory holds no .txt, .jsonl or .gz files"),
    (_bad_gzip, "error: x.txt.gz: not a valid gzip file"),
    (_truncated_gzip, "error: t.txt.gz: not a valid gzip file"),
    (_bad_json, "error: c.jsonl line 2: not valid JSON"),
    (_missing_field, "error: c.jsonl line 1: no 'text' field (choose the field with --field NAME)"),
    (lambda tmp: [], "error: tokenize: give at least one INPUT file or directory (or --builtin-stories SIZE)"),
]


@pytest.mark.parametrize(("make", "message"), BAD_INPUTS, ids=lambda v: getattr(v, "__name__", "")[:20])
def test_bad_input_exits_2_and_leaves_nothing(tmp_path, small_pieces, make, message):
    args = make(tmp_path)
    result = run_cli("tokenize", *args, "-o", "out", "--workers", "2", "--shard-tokens", "2000", cwd=tmp_path)
    assert result.code == 2, result.err
    assert error_line(result).startswith(message)
    assert not (tmp_path / "out").exists()  # created by the run, removed with everything in it


def test_bad_input_in_an_existing_dir_leaves_it_as_it_was(tmp_path, small_pieces):
    _nul(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli("tokenize", "a.txt", "b.txt", "-o", "out", "--workers", "2", "--shard-tokens", "2000", cwd=tmp_path)
    assert result.code == 2
    assert out.is_dir() and list(out.iterdir()) == []


def test_invalid_utf8_replaced_and_counted_without_strict(tmp_path):
    _bad_utf8(tmp_path)
    result = run_cli("tokenize", "latin1.txt", "-o", "out", "--workers", "1", cwd=tmp_path)
    assert result.code == 0, result.err
    assert "replaced 1 invalid UTF-8 sequence(s) with U+FFFD" in result.out
    assert read_meta(tmp_path / "out").replaced_utf8_errors == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--val-fraction", "0"], "error: --val-fraction 0.0: must be between 0 and 1 (exclusive)"),
        (["--val-fraction", "1.5"], "error: --val-fraction 1.5: must be between 0 and 1 (exclusive)"),
        (["--workers", "0"], "error: --workers 0: must be positive"),
        (["--shard-tokens", "-5"], "error: --shard-tokens -5: must be positive"),
        (["--doc-separator", "comma"], "error: --doc-separator comma: choose eot-line or blank-line"),
        (["--builtin-stories", "12XB"], "error: --builtin-stories '12XB': expected a size such as 500KB, 20MB or 1.5GB"),
        (["--builtin-stories", "1MB"], "error: tokenize: give INPUT files or --builtin-stories, not both"),
    ],
)
def test_bad_flags(tmp_path, stories, args, message):
    result = run_cli("tokenize", stories, "-o", tmp_path / "out", *args)
    assert result.code == 2
    assert error_line(result) == message
    assert not (tmp_path / "out").exists()


def test_out_path_that_is_a_file(tmp_path, stories):
    (tmp_path / "out").write_text("x")
    result = run_cli("tokenize", stories, "-o", "out", cwd=tmp_path)
    assert result.code == 2
    assert error_line(result) == "error: -o out: exists and is not a directory"


def test_interrupted_run_removes_its_shards(tmp_path, stories, small_pieces, monkeypatch):
    """Ctrl-C mid-run: finished shards, the temporary shard and the held file all go."""
    calls = 0
    real_add = SplitRouter.add

    def add_then_interrupt(self, *args):
        nonlocal calls
        calls += 1
        if calls == 25:
            raise KeyboardInterrupt
        real_add(self, *args)

    monkeypatch.setattr(SplitRouter, "add", add_then_interrupt)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        run_tokenize(TokenizeOptions(inputs=[stories], out_dir=out, workers=2, shard_tokens=1000))
    assert list(out.iterdir()) == []


def test_real_process_exit_code(tmp_path):
    proc = run_cli_process("tokenize", "missing.txt", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: missing.txt: no such file or directory"


def test_tokenize_does_not_import_torch(tmp_path, stories):
    """The CLI and the tokenize pipeline start without torch (seconds of start-up, and
    the workers fork from a parent a few hundred MB smaller); the API still exports GPT."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from gpt2cli.cli.app import main\n"
        f"try:\n    main(['tokenize', {str(stories)!r}, '-o', {str(tmp_path / 'out')!r}, '--workers', '2'])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "from gpt2cli import GPT, ModelConfig, load_checkpoint\n"
        "assert GPT.__name__ == 'GPT' and 'torch' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "meta.json").exists()


def test_summary_lines_stay_whole_in_a_narrow_pipe(tmp_path):
    """Piped into a log, rich wraps at the console width (80, or COLUMNS): the summary
    and the UTF-8 note are one line each, whatever the width, so grep finds them."""
    import os

    _bad_utf8(tmp_path)
    proc = run_cli_process("tokenize", "latin1.txt", "-o", "out", "--workers", "1", cwd=tmp_path, timeout=120,
                           env={**os.environ, "COLUMNS": "40"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("2 shards from 1 source: ") and line.endswith(" with 1 worker") for line in lines), lines
    assert "replaced 1 invalid UTF-8 sequence(s) with U+FFFD (--strict refuses them)" in lines
    # And no progress bar's last frame in the log (stderr is not a terminal here).
    assert "━" not in proc.stderr and "tokenizing" not in proc.stderr, proc.stderr
