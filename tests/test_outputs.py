"""Never lose what the user had: run/data dir locks, the atomic `tokenize --force`, a full disk.

- Two writers on one data dir (two `gpt2 tokenize`) or one run dir (two `gpt2
  train`): exactly one proceeds, the other exits 2 naming the holder's pid, and
  the dir ends exactly as a single run makes it (no lock file left).
- `tokenize --force` stopped by SIGTERM or killed outright leaves the old data
  byte for byte; a killed run's lock file and build dir do not block the next.
- A small tmpfs filled during tokenize, during `--force` and during a
  checkpoint save: exit 2 with one line; the earlier data or checkpoint stays.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpt2cli.data.stories import write_corpus
from gpt2cli.outputs import LOCK_NAME, DirLock
from tests.conftest import run_cli, tiny_preset, tokenize_stories

TINY_PRESET = tiny_preset(sample_prompts=[], dtype="fp32", device="cpu")


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` (hidden ones too) -> sha256 of its bytes, or "dir"."""
    return {
        p.relative_to(root).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def spawn(*args, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "gpt2cli", *map(str, args)],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} early: {proc.communicate()[1][-2000:]}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def holds_lock(directory: Path) -> bool:
    try:
        return (directory / LOCK_NAME).read_text().strip().isdigit()
    except OSError:
        return False


@contextlib.contextmanager
def stopped_holding_lock(proc: subprocess.Popen, directory: Path, timeout: float):
    """`proc` stopped (SIGSTOP) for the block once it holds `directory`'s lock, so the overlap is
    certain; then it runs on, and must exit 0 within `timeout` seconds."""
    try:
        wait_for(lambda: holds_lock(directory), proc)
        proc.send_signal(signal.SIGSTOP)
        yield
    finally:
        proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err


def last_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and sum(line.startswith("error: ") for line in lines) <= 1, err
    return lines[-1]


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    write_corpus(path, 200_000, seed=1)
    return path


# -- locks ----------------------------------------------------------------------------------------
def test_second_tokenize_on_a_locked_data_dir_exits_2(tmp_path, corpus):
    """Writer A holds the lock (stopped mid-run with SIGSTOP, so the overlap is certain)."""
    out = tmp_path / "data"
    a = spawn("tokenize", corpus, "-o", out, "--workers", "1", cwd=tmp_path)
    with stopped_holding_lock(a, out, timeout=120):
        b = run_cli("tokenize", corpus, "-o", out, "--workers", "1")
        assert b.code == 2
        assert b.err == (
            f"error: -o {out}: in use by another `gpt2 tokenize` (pid {a.pid}); "
            "wait for it to finish or choose another -o\n"
        )
    reference = tmp_path / "reference"
    assert run_cli("tokenize", corpus, "-o", reference, "--workers", "1").code == 0
    assert snapshot(out) == snapshot(reference)  # exactly a single run's files, no lock file


def test_two_tokenize_started_together(tmp_path, corpus):
    out = tmp_path / "data"
    procs = [spawn("tokenize", corpus, "-o", out, "--workers", "1", cwd=tmp_path) for _ in range(2)]
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    # Whichever way they met: the lock, or the winner's finished files.
    line = last_line(loser)
    assert "in use by another `gpt2 tokenize` (pid " in line or "already holds files" in line, line
    reference = tmp_path / "reference"
    assert run_cli("tokenize", corpus, "-o", reference, "--workers", "1").code == 0
    assert snapshot(out) == snapshot(reference)


def test_second_train_on_a_locked_run_dir_exits_2(tmp_path, one_thread):
    tokenize_stories(tmp_path, "40KB")
    (tmp_path / "tiny.toml").write_text(TINY_PRESET)
    args = ("train", "--preset", "tiny.toml", "--data", "data", "--steps", "6", "--eval-every", "3", "--seed", "5")
    a = spawn(*args, "--out", "run", cwd=tmp_path)
    run = tmp_path / "run"
    with stopped_holding_lock(a, run, timeout=300):
        for extra in ((), ("--resume",)):  # a fresh run and a resume are both refused
            b = run_cli(*args, "--out", "run", *extra, cwd=tmp_path)
            assert b.code == 2, b.err
            assert last_line(b.err) == (
                f"error: --out run: in use by another `gpt2 train` (pid {a.pid}); "
                "wait for it to finish or choose another --out"
            )
    r = run_cli(*args, "--out", "reference", cwd=tmp_path)
    assert r.code == 0, r.err
    ref = tmp_path / "reference"
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in ref.iterdir())
    assert LOCK_NAME not in {p.name for p in run.iterdir()}
    assert _contents(run / "ckpt.safetensors") == _contents(ref / "ckpt.safetensors")  # CPU fp32: bit-identical
    # The resume state's weights and moments too (its metadata holds the elapsed time, and the
    # reference ran inside this test process, whose Python/numpy RNG states are its own).
    states = [{k: v for k, v in _contents(d / "ckpt.optim.safetensors")[1].items() if not k.startswith("rng.")}
              for d in (run, ref)]
    assert states[0] == states[1]

    def steps(path):
        import json

        return [(r["step"], r.get("loss"), r.get("val_loss")) for r in map(json.loads, path.read_text().splitlines())]

    assert steps(run / "metrics.jsonl") == steps(ref / "metrics.jsonl")  # one run's records, not two interleaved


def _contents(path: Path) -> tuple[dict, dict]:
    """A safetensors file's metadata and tensor bytes (its header's key order is not fixed)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return f.metadata(), {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    """The kernel drops the lock with the process: its leftover lock file is locked again."""
    d = tmp_path / "d"
    d.mkdir()
    code = (
        "import sys, time\nfrom gpt2cli.outputs import DirLock\n"
        f"DirLock.acquire({str(d)!r}, flag='-o', command='tokenize')\nprint('locked', flush=True)\ntime.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(Exception, match=f"pid {holder.pid}"):
        DirLock.acquire(d, flag="-o", command="tokenize")
    holder.kill()
    holder.wait()
    assert (d / LOCK_NAME).exists()  # left behind by the kill ...
    with DirLock.acquire(d, flag="-o", command="tokenize"):  # ... and no obstacle
        assert (d / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert list(d.iterdir()) == []  # released: the file is gone


# -- tokenize --force is atomic ---------------------------------------------------------------------
def _old_data(tmp_path: Path) -> Path:
    out = tmp_path / "data"
    small = tmp_path / "small.txt"
    write_corpus(small, 30_000, seed=2)
    assert run_cli("tokenize", small, "-o", out, "--workers", "1").code == 0
    (out / "notes.txt").write_text("mine")
    return out


def _build_dirs(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.*"))


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGKILL"])
def test_force_stopped_midway_keeps_the_old_data(tmp_path, how):
    out = _old_data(tmp_path)
    before = snapshot(out)
    corpus = tmp_path / "corpus.txt"
    write_corpus(corpus, 2_000_000, seed=1)  # a shard open for a second or more: the poll below sees it
    a = spawn("tokenize", corpus, "-o", out, "--force", "--workers", "1", cwd=tmp_path)

    def shard_being_written() -> bool:
        # A shard's temporary name exists only while it is written, in the build dir: so mid-build,
        # never after the swap (when the build dir's name holds the old data).
        try:
            builds = out.parent.glob(f".{out.name}.tmp-*")
            return any(p.name.startswith(".train_") for d in builds for p in d.iterdir())
        except FileNotFoundError:  # a build dir removed while listed
            return False

    wait_for(shard_being_written, a)
    a.send_signal(signal.SIGSTOP)  # mid-build, for certain
    a.send_signal(getattr(signal, how))
    a.send_signal(signal.SIGCONT)
    _, err = a.communicate(timeout=120)
    if how != "SIGKILL":
        assert a.returncode == (143 if how == "SIGTERM" else 130), err
        assert err == f"interrupted by {'SIGTERM' if how == 'SIGTERM' else 'Ctrl-C'}: {out} is as it was before\n"
        assert snapshot(out) == before and _build_dirs(out) == []
    else:  # killed outright: nothing could clean up, and nothing of the old data is lost
        assert a.returncode == -signal.SIGKILL
        assert snapshot(out) == {**before, LOCK_NAME: snapshot(out)[LOCK_NAME]} and len(_build_dirs(out)) == 1
    # The next run is not blocked by what a killed one left, and removes it.
    r = run_cli("tokenize", corpus, "-o", out, "--force", "--workers", "1")
    assert r.code == 0, r.err
    reference = tmp_path / "reference"
    assert run_cli("tokenize", corpus, "-o", reference, "--workers", "1").code == 0
    assert snapshot(out) == {**snapshot(reference), "notes.txt": before["notes.txt"]}
    assert _build_dirs(out) == []


def test_force_with_a_bad_input_keeps_the_old_data(tmp_path, corpus):
    out = _old_data(tmp_path)
    before = snapshot(out)
    (tmp_path / "bad.txt").write_bytes(b"text then \x00\x01 binary")
    r = run_cli("tokenize", corpus, "bad.txt", "-o", out, "--force", "--workers", "1", cwd=tmp_path)
    assert r.code == 2 and last_line(r.err).startswith("error: bad.txt: binary file")
    assert snapshot(out) == before and _build_dirs(out) == []


# -- a full disk ------------------------------------------------------------------------------------
@contextlib.contextmanager
def small_fs(path: Path, size: str):
    """A tmpfs of `size` mounted at `path` (root only; skipped where mounting is not allowed)."""
    path.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no mount command: the full-disk tests need a small tmpfs")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not permitted'}); the full-disk tests need one")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


NO_SPACE = "could not write (No space left on device); free some space or write somewhere else, then run again"


def test_disk_full_during_tokenize(tmp_path, corpus):
    with small_fs(tmp_path / "fs", "256k") as fs:
        small = tmp_path / "small.txt"
        write_corpus(small, 30_000, seed=2)
        assert run_cli("tokenize", small, "-o", fs / "old", "--workers", "1").code == 0
        before = snapshot(fs)
        r = run_cli("tokenize", corpus, corpus, corpus, "-o", fs / "new", "--workers", "1")
        assert r.code == 2, r.err
        assert r.err == f"error: -o {fs / 'new'}: {NO_SPACE}\n"  # one line: no half-drawn progress bar either
        assert snapshot(fs) == before  # the new dir and its temporaries are gone, the old data is whole


def test_disk_full_during_force(tmp_path, corpus):
    with small_fs(tmp_path / "fs", "256k") as fs:
        small = tmp_path / "small.txt"
        write_corpus(small, 30_000, seed=2)
        out = fs / "data"
        assert run_cli("tokenize", small, "-o", out, "--workers", "1").code == 0
        before = snapshot(fs)
        r = run_cli("tokenize", corpus, corpus, corpus, "-o", out, "--force", "--workers", "1")
        assert r.code == 2, r.err
        assert r.err == f"error: -o {out}: {NO_SPACE}\n"
        assert snapshot(fs) == before


def test_disk_full_during_a_checkpoint_save(tmp_path, one_thread):
    tokenize_stories(tmp_path, "40KB")
    (tmp_path / "tiny.toml").write_text(TINY_PRESET)
    with small_fs(tmp_path / "fs", "40m") as fs:
        args = ("train", "--preset", "tiny.toml", "--data", "data", "--out", fs / "run")
        r = run_cli(*args, "--steps", "2", cwd=tmp_path)
        assert r.code == 0, r.err
        run = fs / "run"
        kept = {name: (run / name).read_bytes() for name in ("ckpt.safetensors", "ckpt.optim.safetensors")}
        st = os.statvfs(fs)
        # Leave room for the logs but not for a resume state (~3x the checkpoint).
        (fs / "ballast").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 4 * 1024 * 1024))
        r = run_cli(*args, "--resume", "--steps", "4", cwd=tmp_path)
        assert r.code == 2, r.err
        line = last_line(r.err)
        assert line.startswith(f"error: {run / 'ckpt.optim.safetensors'}: could not write (") and "No space" in line
        assert {name: (run / name).read_bytes() for name in kept} == kept
        assert not [p.name for p in run.iterdir() if ".tmp" in p.name or p.name == LOCK_NAME]


def test_force_through_a_symlinked_out_dir(tmp_path, corpus):
    """-o a symlink: the dir it points to gets the new data, the link stays a link."""
    real = _old_data(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(real.name)
    r = run_cli("tokenize", corpus, "-o", link, "--force", "--workers", "1")
    assert r.code == 0, r.err
    assert link.is_symlink() and (real / "notes.txt").read_text() == "mine"
    reference = tmp_path / "reference"
    assert run_cli("tokenize", corpus, "-o", reference, "--workers", "1").code == 0
    assert {k: v for k, v in snapshot(real).items() if k != "notes.txt"} == snapshot(reference)
    assert _build_dirs(real) == []


def test_a_build_in_progress_is_not_the_default_data_dir(tmp_path, monkeypatch):
    from gpt2cli.defaults import default_data_dir

    for name in ("stories", ".stories.tmp-4242"):  # the second: a `tokenize --force` build, newer
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "meta.json").write_text("{}")
        time.sleep(0.01)
    monkeypatch.chdir(tmp_path)
    assert default_data_dir()[0] == Path("data/stories")


def test_the_default_data_dir_note_counts_in_words(tmp_path, monkeypatch):
    from gpt2cli.defaults import default_data_dir

    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "meta.json").write_text("{}")
        time.sleep(0.01)
    assert default_data_dir()[1] == "data: data/b (the newest of 2 data dirs under ./data)"
    (tmp_path / "data" / "b" / "meta.json").unlink()
    assert default_data_dir()[1] == "data: data/a (the only data dir under ./data)"


def test_a_file_system_without_locks_runs_unlocked(tmp_path, monkeypatch):
    """Some network mounts refuse flock (ENOLCK): the writer goes on as it did before locks, leaving nothing."""
    import errno

    import gpt2cli.outputs as outputs

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(outputs.fcntl, "flock", no_locks)
    with DirLock.acquire(tmp_path, flag="--out", command="train"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_owned_files_are_replaced_only_in_their_own_role(tmp_path):
    """eval.json / heads.json beside a run: --json may name them without --force; another
    flag may not, even with --force; and they may not be an input (the command writes them)."""
    from gpt2cli.errors import UserError
    from gpt2cli.outputs import Output, check_outputs

    kept = tmp_path / "heads.json"
    kept.write_text("{}\n", encoding="utf-8")
    owned = [Output("--json", kept)]
    check_outputs([Output("--json", kept)], [], owned=owned)
    for force in (False, True):
        with pytest.raises(UserError, match="--png .*heads.json: is the heads.json this command also writes there"):
            check_outputs([Output("--png", kept)], [], force=force, owned=owned)
    with pytest.raises(UserError, match="heads.json: is an input, but this command writes its own heads.json there"):
        check_outputs([], [tmp_path / "." / "heads.json"], force=True, owned=owned)
    assert kept.read_text(encoding="utf-8") == "{}\n"
