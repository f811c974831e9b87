"""The one output policy: what a command may write, checked before any work.

Every command that writes files names its outputs here first. An output is
refused (UserError: one line, exit 2) when it

- already exists and the command's overwrite flag (`--force`) was not given;
- is the same file as one of the command's inputs (compared by device and
  inode, so a symlink or a hard link to the input counts too) — even with
  `--force`;
- is one of a run dir's or a data dir's own files (the checkpoint, the resume
  state, metrics, shards, meta.json ...) that only `gpt2 train` / `gpt2
  tokenize` write — even with `--force`.

Files a command owns in a run dir (`report.html` and its PNGs for `gpt2
report`, `eval.json` for `gpt2 eval`, `heads.json` for `gpt2 inspect heads`)
are derived from the run and replaced freely, in their own role only: `gpt2
inspect heads --png RUN/heads.json` is refused, and so is an owned file that
is also an input. The writes themselves go
through `gpt2cli.atomic` (a temporary name, then a rename).

Writers of a run dir or data dir also hold its lock (`DirLock`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpt2cli.errors import UserError, shown_path

LOCK_NAME = ".gpt2.lock"
# A run dir's own files, written only by `gpt2 train` (train/run_dir.py).
RUN_FILES = ("ckpt.safetensors", "ckpt.optim.safetensors", "metrics.jsonl", "samples.jsonl", "config.json")
RUN_MARKERS = ("ckpt.optim.safetensors", "metrics.jsonl", "samples.jsonl")
# A data dir's own files, written only by `gpt2 tokenize` (data/meta.py).
DATA_META = "meta.json"
SHARD = re.compile(r"(train|val)_(\d{6})\.bin")


@dataclass(frozen=True)
class Output:
    """One file a command is about to write: the flag that named it and its path."""

    flag: str  # how the message names it, e.g. "--json" or "DST"
    path: Path


def dir_kind(directory: Path) -> str | None:
    """'run dir' or 'data dir' when `directory` holds one's own files, else None."""
    try:
        names = set(os.listdir(directory))
    except OSError:
        return None
    if names & set(RUN_MARKERS) or ("ckpt.safetensors" in names and "config.json" in names):
        return "run dir"
    if DATA_META in names or any(SHARD.fullmatch(n) for n in names):
        return "data dir"
    return None


def _protected(path: Path) -> tuple[str, str] | None:
    """(kind, writer) when `path` names a run dir's or data dir's own file."""
    kind = dir_kind(path.parent)
    if kind == "run dir" and (path.name in RUN_FILES or path.name == LOCK_NAME):
        return kind, "gpt2 train"
    if kind == "data dir" and (path.name == DATA_META or SHARD.fullmatch(path.name) or path.name == LOCK_NAME):
        return kind, "gpt2 tokenize"
    return None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()  # follows symlinks: a link to the input is the input
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _entry(path: Path) -> Path:
    """The directory entry a rename onto `path` replaces (its parent resolved, not the path itself)."""
    try:
        return path.parent.resolve() / path.name
    except (OSError, RuntimeError):
        return path


def same_entry(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same directory entry (however the folder is spelled)."""
    return _entry(Path(a)) == _entry(Path(b))


def check_outputs(
    outputs: Sequence[Output],
    inputs: Iterable[str | os.PathLike] = (),
    *,
    force: bool = False,
    owned: Iterable[Output] = (),
    force_flag: str = "--force",
) -> None:
    """Refuse any output the policy forbids, before the command does any work.

    `owned`: derived files this command writes itself and always replaces
    (eval.json, heads.json beside a run), each with the flag that may name it
    too (`--json`). Named by another flag, an owned file is refused even with
    `--force`: the command would write over it itself.
    """
    inputs = [Path(p) for p in inputs]
    input_ids = {ident: p for p in inputs if (ident := _identity(p)) is not None}
    owned_flags = {_entry(Path(o.path)): o.flag for o in owned}
    for own in owned:
        ident = _identity(Path(own.path))
        if ident is not None and ident in input_ids:
            raise UserError(
                f"{shown_path(input_ids[ident])}: is an input, but this command writes its own "
                f"{shown_path(Path(own.path).name)} there; give a copy of it at another path"
            )
    seen: dict[Path, Output] = {}
    for out in outputs:
        path = out.path
        named = f"{out.flag} {shown_path(path)}" if out.flag else shown_path(path)
        entry = _entry(path)
        if entry in seen:
            raise UserError(f"{named}: also given as {seen[entry].flag}; give each output its own path")
        seen[entry] = out
        ident = _identity(path)
        if ident is not None and ident in input_ids:
            src = input_ids[ident]
            if entry == _entry(src):
                raise UserError(f"{named}: is the input {shown_path(src)} itself; write to another path")
            raise UserError(
                f"{named}: is the same file as the input {shown_path(src)} (through a link); write to another path"
            )
        if entry in owned_flags:
            if owned_flags[entry] == out.flag:
                continue
            raise UserError(
                f"{named}: is the {shown_path(path.name)} this command also writes there; write to another path"
            )
        for candidate in dict.fromkeys((entry, _resolved(path))):  # usually one path: list its dir once
            hit = _protected(candidate)
            if hit is not None:
                kind, writer = hit
                link = "" if candidate == entry else " (through a link)"
                raise UserError(
                    f"{named}: is a {kind}'s own {shown_path(candidate.name)}{link}, written only by `{writer}`; "
                    "write to another path"
                )
        if os.path.lexists(path) and not path.is_dir() and not force:
            raise UserError(f"{named}: already exists; pass {force_flag} to replace it")


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path


def check_output_dir(flag: str, directory: Path, *, writer: str) -> None:
    """Refuse a directory output that is a file, or another command's run dir or data dir."""
    named = f"{flag} {shown_path(directory)}" if flag else shown_path(directory)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{named}: exists and is not a directory")
    kind = dir_kind(directory)  # None for a missing path too
    mine = {"gpt2 train": "run dir", "gpt2 tokenize": "data dir"}.get(writer)
    if kind is not None and kind != mine:
        other = "gpt2 train" if kind == "run dir" else "gpt2 tokenize"
        raise UserError(
            f"{named}: is a {kind} (written by `{other}`); choose another {flag or 'directory'}"
        )


def missing_dirs(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first: what
    `mkdir(parents=True)` will make, and what a failed run removes again."""
    missing = []
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def remove_empty_dirs(dirs: list[Path]) -> None:
    """Remove the dirs (deepest first) that are still empty; leave any other."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            return


def first_names(names: Sequence[str]) -> str:
    """`a, b, c, …`: the first three of a directory's entries, for a message refusing it."""
    return ", ".join(names[:3]) + (", …" if len(names) > 3 else "")


def files_in(directory: str | os.PathLike | None) -> list[Path]:
    """The files directly in an input directory (a data dir's shards and meta.json), for check_outputs."""
    if directory is None:
        return []
    try:
        return [p for p in Path(directory).iterdir() if p.is_file()]
    except OSError:
        return []


# -- locks ----------------------------------------------------------------------------------------
_HELD: set[int] = set()
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


def _close_in_child() -> None:
    # A forked worker must not keep its parent's lock alive after the parent dies.
    for fd in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


class DirLock:
    """An exclusive OS lock (flock) on DIR/.gpt2.lock, held by one writer of a run dir or data dir.

    The kernel drops it when the process ends, however it ends, so a killed
    run never leaves a stale lock: a leftover lock file is simply locked again.
    The file holds the holder's pid, for the message a second writer gets;
    `release` removes it, so a finished run leaves nothing behind.
    """

    def __init__(self, path: Path, fd: int | None):
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: str | os.PathLike, *, flag: str, command: str) -> DirLock:
        path = Path(directory) / LOCK_NAME
        where = f"{flag} {shown_path(directory)}"
        for _ in range(20):  # only a release racing with us makes this loop
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise UserError(f"{where}: cannot lock it ({err.strerror or err})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in _NO_LOCKS:
                    # A file system without locks (some network mounts): run unlocked, as before locks.
                    with contextlib.suppress(OSError):
                        if path.stat().st_size == 0:
                            path.unlink()
                    return cls(path, None)
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise UserError(f"{where}: cannot lock it ({err.strerror or err})") from None
                holder = _holder(path)
                raise UserError(
                    f"{where}: in use by another `gpt2 {command}` ({holder}); "
                    f"wait for it to finish or choose another {flag}"
                ) from None
            # The holder before us may have removed the file between our open and our lock:
            # then we locked a file nobody else will see. Start again on the one that is there.
            if _identity(path) != _fd_identity(fd):
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            _HELD.add(fd)
            return cls(path, fd)
        raise UserError(f"{where}: cannot lock it (the lock file keeps changing)")

    def adopt(self, directory: Path) -> None:
        """The locked directory was renamed to `directory` (tokenize's swap): follow it."""
        self.path = Path(directory) / LOCK_NAME

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        # Remove the file while still holding the lock, so the next writer creates a fresh one.
        if _identity(self.path) == _fd_identity(fd):
            with contextlib.suppress(OSError):
                self.path.unlink()
        _HELD.discard(fd)
        with contextlib.suppress(OSError):
            os.close(fd)

    def __enter__(self) -> DirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _fd_identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _holder(path: Path) -> str:
    # The holder writes its pid right after locking; give it a moment to do so.
    for _ in range(50):
        try:
            text = path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            text = ""
        if text.isdigit():
            return f"pid {text}"
        time.sleep(0.01)
    return "pid unknown"


def is_lock_file(name: str) -> bool:
    return name == LOCK_NAME


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but is not ours (PermissionError)
        return True
    return True


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE).

    False where the system or file system cannot (the caller then renames twice).
    """
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))
