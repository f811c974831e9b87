"""`gpt2 tokenize`: a corpus of any size -> uint16 token shards + meta.json.

The pipeline streams: the main process reads each source in blocks and cuts
it into ~4 MB pieces at document boundaries (gpt2cli.data.sources); a pool
of worker processes decodes and tokenizes the pieces (gpt2cli.data.encode);
the main process takes the results back in order, sends each document to
train or val (gpt2cli.data.split) and appends it to that split's shards
(gpt2cli.data.writer). At most a few pieces per worker are in flight, so
memory stays flat whatever the corpus size, and because results are consumed
in input order the shards are byte-identical for any number of workers.

Processes rather than threads: tiktoken 0.14 releases the GIL while it
encodes, yet two encoding threads spent twice the CPU per byte of two
processes (measured on 300 MB: 8-9 MB/s against 15-16), no faster than one.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import multiprocessing
import os
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpt2cli.bounds import check
from gpt2cli.data.encode import EncodedPiece, encode_piece
from gpt2cli.data.meta import (
    META_NAME,
    SHARD_NAME,
    DataMeta,
    ReadSettings,
    SourceInfo,
    SplitSettings,
    write_meta,
)
from gpt2cli.data.sources import Piece, SourceFile, SourceReader, expand_inputs
from gpt2cli.data.split import SplitRouter
from gpt2cli.data.writer import ShardWriter
from gpt2cli.errors import UserError, write_failed
from gpt2cli.interrupt import interrupt_on_sigterm, signals_held
from gpt2cli.outputs import (
    DirLock,
    check_output_dir,
    exchange_paths,
    first_names,
    is_lock_file,
    missing_dirs,
    pid_alive,
    remove_empty_dirs,
)
from gpt2cli.tokenizer import EOT_ID, RANKS_SHA256, TOKENIZER_NAME, VOCAB_SIZE, get_tokenizer

BUILTIN_SOURCE = Path("source") / "stories.txt"
_HELD_NAME = ".held-document.tmp"


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class TokenizeOptions(BaseModel):
    """Everything `gpt2 tokenize` needs; the CLI fills it from flags."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[Path] = []
    out_dir: Path
    val_fraction: float = Field(0.005, gt=0.0, lt=1.0)
    workers: int = Field(default_factory=default_workers, ge=1)
    shard_tokens: int = Field(100_000_000, gt=0)
    field: str = "text"
    doc_separator: Literal["eot-line", "blank-line"] = "eot-line"
    seed: int = 0
    strict: bool = False
    force: bool = False
    builtin_stories: int | None = Field(None, gt=0)  # bytes of built-in stories to generate and tokenize

    @model_validator(mode="after")
    def _bounds(self) -> TokenizeOptions:
        # The same limits as the flags (gpt2cli.bounds): no fork bomb, no million tiny shards.
        check("--workers", self.workers)
        check("--shard-tokens", self.shard_tokens)
        return self


@dataclass
class TokenizeProgress:
    stage: Literal["generating", "tokenizing"]
    done_bytes: int
    total_bytes: int
    documents: int = 0
    tokens: int = 0


@dataclass
class TokenizeSummary:
    out_dir: Path
    documents: dict[str, int]
    tokens: dict[str, int]
    shards: int
    sources: int
    bytes_in: int  # on disk, as read (compressed for .gz)
    text_bytes: int  # after decompression
    seconds: float
    workers: int
    replaced_utf8_errors: int = 0
    skipped_empty_documents: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.text_bytes / 1e6 / max(self.seconds, 1e-9)

    @property
    def tokens_per_s(self) -> float:
        return sum(self.tokens.values()) / max(self.seconds, 1e-9)

    def to_json(self) -> dict:
        return {
            "out_dir": str(self.out_dir),
            "documents": self.documents,
            "tokens": self.tokens,
            "shards": self.shards,
            "sources": self.sources,
            "bytes_in": self.bytes_in,
            "text_bytes": self.text_bytes,
            "seconds": round(self.seconds, 3),
            "mb_per_s": round(self.mb_per_s, 2),
            "tokens_per_s": round(self.tokens_per_s),
            "workers": self.workers,
            "replaced_utf8_errors": self.replaced_utf8_errors,
            "skipped_empty_documents": self.skipped_empty_documents,
            "notes": self.notes,
        }


DRAIN_SECONDS = 30  # per pending piece, when a run stops early


def _ignore_sigint() -> None:
    # Ctrl-C and SIGTERM are the main process's to handle (it cleans up); workers just
    # stop with the pool (which itself ends them with SIGTERM: keep its default action).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def ordered_map(fn: Callable, items: Iterable, workers: int, in_flight: int) -> Iterator:
    """fn over items in `workers` processes, results in input order, at most `in_flight` pending."""
    if workers == 1:
        yield from map(fn, items)
        return
    # fork shares the already-loaded tokenizer and skips re-importing torch; spawn elsewhere.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    # SIGTERM held while the pool forks its workers. A worker is forked with the parent's
    # Python SIGTERM handler; a SIGTERM that lands before `_ignore_sigint` resets it is
    # swallowed (the handler is gone by the time the interpreter would run it), and that
    # worker then never dies: the pool's terminate waited on it forever. Held, the signal
    # stays pending until the worker unblocks it with the default action in place. Threads
    # the pool starts here inherit the mask, so workers it forks later are covered too.
    with signals_held({signal.SIGTERM}):
        pool = multiprocessing.get_context(method).Pool(workers, initializer=_ignore_sigint)
    with pool:
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.apply_async(fn, (item,)))
                if len(pending) >= in_flight:
                    yield pending.popleft().get()
            while pending:
                yield pending.popleft().get()
        finally:
            # Stopped early (an error, Ctrl-C): let the pieces already handed over finish
            # (seconds at most) so the pool exits as it does after a full run. Terminated
            # while its task thread was still writing pieces to the workers, it once hung
            # for 15 minutes in CI.
            for result in pending:
                result.wait(DRAIN_SECONDS)


def _is_ours(name: str) -> bool:
    """Entries of a data dir that tokenize writes (or a killed tokenize left behind)."""
    return name == META_NAME or bool(SHARD_NAME.fullmatch(name)) or is_lock_file(name) or (
        name.startswith(".") and ".tmp" in name
    )


def _check_out_dir(out: Path, force: bool) -> list[str]:
    """The entries already in the (locked) output dir; refused unless --force."""
    entries = sorted(p.name for p in out.iterdir() if not is_lock_file(p.name))
    if entries and not force:
        raise UserError(f"-o {out}: already holds files ({first_names(entries)}); use --force to replace its data")
    return entries


def _label(path: Path, out: Path) -> str:
    """How meta.json names a source: relative to DATA_DIR when inside it, else as given."""
    try:
        return path.resolve().relative_to(out.resolve()).as_posix()
    except ValueError:
        return str(path)


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def tokenize_corpus(opts: TokenizeOptions) -> Iterator[TokenizeProgress | TokenizeSummary]:
    """Run the whole job, yielding progress events and, last, a TokenizeSummary.

    The output dir is locked for the whole job. Into an empty (or new) dir the
    shards are written in place; with `force` over existing data, the new data
    dir is built beside the old one (DIR/../.NAME.tmp-PID) and swapped in only
    when complete, so an error, Ctrl-C, SIGTERM or a full disk leaves the old
    one exactly as it was. Files in it that are not tokenize's are carried over.
    """
    out = opts.out_dir
    if opts.builtin_stories and opts.inputs:
        raise UserError("tokenize: give INPUT files or --builtin-stories, not both")
    sources = [] if opts.builtin_stories else expand_inputs(opts.inputs)
    if sources and all(s.path.stat().st_size == 0 for s in sources):
        # Known before any work: say so before a progress bar is drawn.
        names = sources[0].label if len(sources) == 1 else f"{len(sources)} input files"
        raise UserError(f"{names}: no documents (empty corpus)")
    check_output_dir("-o", out, writer="gpt2 tokenize")
    created = missing_dirs(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"-o {out}: cannot create the directory ({err.strerror or err})") from None
    locks: list[DirLock] = []
    build: Path | None = None
    try:
        locks.append(DirLock.acquire(out, flag="-o", command="tokenize"))
        with interrupt_on_sigterm():
            if _check_out_dir(out, opts.force):
                real = out.resolve()  # -o may be a symlink: the swap replaces the dir it points to
                build = _build_path(real)  # named before it exists: an interrupt from here on removes it
                _make_build_dir(build, out)
                locks.append(DirLock.acquire(build, flag="-o", command="tokenize"))
            summary = yield from _build(opts, sources, build or out)
            if build is not None:
                try:
                    _carry_over(real, build)
                except OSError as err:
                    raise write_failed(f"-o {out}", err) from None
                with signals_held({signal.SIGINT, signal.SIGTERM}):  # swapped means done: no "interrupted" from here on
                    old = _swap(build, real)
                    locks[0].adopt(old)
                    locks[1].adopt(real)
                    build = None
                shutil.rmtree(old, ignore_errors=True)
        summary.out_dir = out
        yield summary
    except BaseException:
        if build is not None:
            shutil.rmtree(build, ignore_errors=True)
        for lock in locks:
            lock.release()
        locks = []
        remove_empty_dirs(created)
        raise
    finally:
        for lock in locks:
            lock.release()


def _build(opts: TokenizeOptions, sources: list[SourceFile], build: Path):
    """Write the data into `build`; returns the summary (yields the progress)."""
    generated: Path | None = None
    summary = None
    try:
        if opts.builtin_stories:
            from gpt2cli.data.stories import write_corpus

            generated = build / BUILTIN_SOURCE
            yield TokenizeProgress("generating", 0, opts.builtin_stories)
            try:
                written = write_corpus(generated, opts.builtin_stories, seed=opts.seed)
            except OSError as err:
                if err.errno not in _WRITE_ERRNOS:
                    raise
                raise write_failed(f"-o {opts.out_dir}", err) from None
            yield TokenizeProgress("generating", written, opts.builtin_stories)
            sources = [SourceFile(generated, BUILTIN_SOURCE.as_posix(), "text", False)]
        for event in _run(opts, sources, build):
            if isinstance(event, TokenizeSummary):
                summary = event
            else:
                yield event
    except BaseException:
        if generated is not None:
            generated.unlink(missing_ok=True)
            remove_empty_dirs([generated.parent])
        raise
    return summary


def _build_path(out: Path) -> Path:
    """Where the new data is built, beside `out`; build dirs of dead runs are removed."""
    for stale in out.parent.glob(f".{glob.escape(out.name)}.tmp-*"):
        pid = stale.name.rpartition(".tmp-")[2]
        if pid.isdigit() and not pid_alive(int(pid)) and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return out.parent / f".{out.name}.tmp-{os.getpid()}"


def _make_build_dir(build: Path, out: Path) -> None:
    shutil.rmtree(build, ignore_errors=True)
    try:
        build.mkdir()
    except OSError as err:
        raise UserError(f"-o {out}: cannot create {build.name} beside it ({err.strerror or err})") from None


def _carry_over(old: Path, new: Path) -> None:
    """Hard-link (or copy) the old dir's entries that are not tokenize's into the new one."""
    for entry in sorted(old.iterdir()):
        if not _is_ours(entry.name):
            _link_tree(entry, new / entry.name)


def _link_tree(src: Path, dst: Path) -> None:
    if src.is_symlink():
        if not os.path.lexists(dst):
            os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        dst.mkdir(exist_ok=True)
        for child in sorted(src.iterdir()):
            _link_tree(child, dst / child.name)
    elif not os.path.lexists(dst):  # the new run wrote its own (the built-in source)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def _swap(new: Path, out: Path) -> Path:
    """Put `new` in place of `out`; returns where the old dir is now."""
    if exchange_paths(new, out):
        return new
    # No atomic exchange here: two renames (the caller holds Ctrl-C and SIGTERM back).
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.rename(out, old)
    os.rename(new, out)
    return old


def _run(opts: TokenizeOptions, sources: list[SourceFile], out: Path) -> Iterator[TokenizeProgress | TokenizeSummary]:
    start = time.perf_counter()
    get_tokenizer()  # load once here, so forked workers inherit it
    writers = {split: ShardWriter(out, split, opts.shard_tokens) for split in ("train", "val")}
    router = SplitRouter(opts.seed, opts.val_fraction, lambda split, t: writers[split].write(t), out / _HELD_NAME)
    readers: list[SourceReader] = []
    source_docs = [0] * len(sources)
    total_bytes = sum(s.path.stat().st_size for s in sources)
    done_before = 0  # raw bytes of the sources before the one being read
    text_bytes = replaced = skipped = 0

    def pieces() -> Iterator[Piece]:
        nonlocal done_before
        for index, source in enumerate(sources):
            if readers:
                done_before += readers[-1].raw_bytes_read
            reader = SourceReader(source, index, opts.doc_separator)
            readers.append(reader)
            yield from reader.pieces()

    encode = partial(encode_piece, separator=opts.doc_separator, field_name=opts.field, strict=opts.strict)
    try:
        for result in ordered_map(encode, pieces(), opts.workers, in_flight=3 * opts.workers + 2):
            result: EncodedPiece
            if result.error:
                raise UserError(result.error)
            router.add(result.tokens, result.lengths, result.continues, result.open_end)
            source_docs[result.source] += len(result.lengths) - (1 if result.continues else 0)
            text_bytes += result.nbytes
            replaced += result.replaced
            skipped += result.skipped
            yield TokenizeProgress(
                "tokenizing",
                done_before + readers[-1].raw_bytes_read,
                total_bytes,
                router.documents["train"] + router.documents["val"],
                writers["train"].tokens + writers["val"].tokens + router.held_tokens,
            )
        router.finish()
        documents = dict(router.documents)
        if sum(documents.values()) == 0:
            names = sources[0].label if len(sources) == 1 else f"{len(sources)} input files"
            raise UserError(f"{names}: no documents (empty corpus)")
        shards = writers["train"].close() + writers["val"].close()
        meta = DataMeta(
            tokenizer=TOKENIZER_NAME,
            ranks_sha256=RANKS_SHA256,
            vocab_size=VOCAB_SIZE,
            eot_id=EOT_ID,
            shard_tokens=opts.shard_tokens,
            documents=documents,
            tokens={split: w.tokens for split, w in writers.items()},
            shards=shards,
            sources=[
                SourceInfo(
                    path=_label(r.source.path, out) if opts.builtin_stories else r.source.label,
                    format=r.source.format,
                    gzip=r.source.gzip,
                    bytes=r.size,
                    sha256=r.sha256,
                    documents=source_docs[r.index],
                )
                for r in readers
            ],
            split=SplitSettings(val_fraction=opts.val_fraction, seed=opts.seed),
            reading=ReadSettings(doc_separator=opts.doc_separator, field=opts.field, strict=opts.strict),
            replaced_utf8_errors=replaced,
            skipped_empty_documents=skipped,
            builtin_stories={"bytes": total_bytes, "seed": opts.seed} if opts.builtin_stories else None,
        )
        write_meta(out, meta)
    except BaseException as err:
        router.close()
        for writer in writers.values():
            writer.abort()
        if isinstance(err, OSError) and err.errno in _WRITE_ERRNOS:
            raise write_failed(f"-o {opts.out_dir}", err) from None
        raise
    notes = []
    if documents["val"] == 0:
        notes.append("only one document: the val split is empty")
    yield TokenizeSummary(
        out_dir=opts.out_dir,
        documents=documents,
        tokens=dict(meta.tokens),
        shards=len(shards),
        sources=len(sources),
        bytes_in=sum(r.size for r in readers),
        text_bytes=text_bytes,
        seconds=time.perf_counter() - start,
        workers=opts.workers,
        replaced_utf8_errors=replaced,
        skipped_empty_documents=skipped,
        notes=notes,
    )


def run_tokenize(opts: TokenizeOptions) -> TokenizeSummary:
    """tokenize_corpus without progress: returns the summary."""
    summary = None
    with contextlib.closing(tokenize_corpus(opts)) as events:
        for event in events:
            summary = event
    assert isinstance(summary, TokenizeSummary)
    return summary
