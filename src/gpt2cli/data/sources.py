"""Input files -> pieces of raw bytes, cut where documents end.

This side runs in the main process and only touches bytes: it expands
directories, reads (and un-gzips) each file in blocks, hashes what is on disk,
refuses binary files, and cuts the stream into ~4 MB pieces that workers
decode and tokenize (gpt2cli.data.encode). A cut falls after a document
boundary whenever one is in reach, so pieces hold whole documents; only a
document longer than `max_piece_bytes` is cut inside, at a point where GPT-2's
pre-tokenizer is known to split anyway (see `safe_cut`), so that tokenizing
the parts gives exactly the tokens of the whole.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal

from gpt2cli.errors import UserError
from gpt2cli.tokenizer import EOT_TEXT

TEXT_SUFFIXES = (".txt", ".jsonl")
# 4 MB pieces: the main process's per-piece costs (task hand-off, result routing,
# progress) took ~1 CPU-s per 300 MB more with 1 MB ones, CPU the workers need.
READ_BLOCK = 4 << 20
PIECE_BYTES = 4 << 20
MAX_PIECE_BYTES = 16 << 20
_EOT = EOT_TEXT.encode("ascii")
_BOM = b"\xef\xbb\xbf"

DocSeparator = Literal["eot-line", "blank-line"]


@dataclass(frozen=True)
class SourceFile:
    path: Path
    label: str  # how messages and meta.json name it
    format: Literal["text", "jsonl"]
    gzip: bool


@dataclass(frozen=True)
class Piece:
    """A run of bytes from one source, handed to a worker."""

    source: int  # index into the source list
    label: str
    format: Literal["text", "jsonl"]
    offset: int  # byte offset in the (decompressed) stream, for messages
    line: int  # 1-based number of its first line, for jsonl messages (1 for text pieces)
    data: bytes
    continues: bool  # starts inside a document begun by the previous piece
    open_end: bool  # ends inside a document the next piece finishes
    file_end: bool  # the last piece of its file


def _kind(path: Path) -> tuple[Literal["text", "jsonl"], bool] | None:
    """(format, gzipped) from the name, or None when a directory walk should skip it."""
    name = path.name.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    if name.endswith(".jsonl"):
        return "jsonl", gz
    if name.endswith(".txt") or gz:
        return "text", gz
    return None


def expand_inputs(inputs: Sequence[str | Path]) -> list[SourceFile]:
    """Each input file, and every .txt/.jsonl/.gz below each input directory (sorted)."""
    if not inputs:
        raise UserError("tokenize: give at least one INPUT file or directory (or --builtin-stories SIZE)")
    sources: list[SourceFile] = []
    for given in inputs:
        path = Path(given)
        if not path.exists():
            raise UserError(f"{given}: no such file or directory")
        if path.is_dir():
            found = []
            for p in sorted(path.rglob("*")):
                rel = p.relative_to(path)
                if any(part.startswith(".") for part in rel.parts) or not p.is_file():
                    continue
                kind = _kind(p)
                if kind is not None:
                    found.append(SourceFile(p, str(p), kind[0], kind[1]))
            if not found:
                raise UserError(f"{given}: directory holds no .txt, .jsonl or .gz files")
            sources.extend(found)
        else:
            # A file named on the command line is read as text unless it says .jsonl.
            fmt, gz = _kind(path) or ("text", False)
            sources.append(SourceFile(path, str(given), fmt, gz))
    return sources


class _HashingReader:
    """Reads the file on disk, hashing and counting the bytes as they pass."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def read(self, n: int = -1) -> bytes:
        block = self.fh.read(n)
        self.sha256.update(block)
        self.bytes += len(block)
        return block


def _solid_before(buf: bytes | bytearray, i: int) -> bool:
    """Whether the character ending just before byte i is not whitespace."""
    if i <= 0:
        return False
    b = buf[i - 1]
    if b < 0x80:
        return not chr(b).isspace()
    start = i - 1
    while start > max(0, i - 4) and 0x80 <= buf[start] < 0xC0:
        start -= 1
    try:
        ch = buf[start:i].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return len(ch) == 1 and not ch.isspace()


def _solid_at(buf: bytes | bytearray, i: int) -> bool:
    """Whether the character starting at byte i is not whitespace (and not a separator's '<')."""
    if i >= len(buf):
        return False
    b = buf[i]
    if b < 0x80:
        return not chr(b).isspace() and b != 0x3C  # '<' might open an <|endoftext|> line
    n = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
    try:
        ch = buf[i : i + n].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return len(ch) == 1 and not ch.isspace()


def _ends_eot_line(buf: bytes | bytearray, i: int) -> bool:
    """Whether buf[:i] ends with a line that is just <|endoftext|> (so far).

    A piece ending there would look like it ends with a separator line.
    """
    start = i - len(_EOT)
    return buf[start:i] == _EOT and (start == 0 or buf[start - 1] == 0x0A)


def safe_cut(buf: bytes | bytearray, lo: int, hi: int) -> int | None:
    """A cut position in [lo, hi] inside a document that keeps tokenization exact.

    GPT-2's pre-tokenizer (the regex in gpt2cli.tokenizer) never joins a
    non-space character with a following " " or "\\n", and a " " or "\\n"
    followed by a non-space character always starts a new piece (` ?\\p{L}+`
    and friends take at most one leading space; a lone "\\n" before a
    non-space is its own piece). So cutting before " " in "x y", or after
    "\\n" in "x\\ny" (x, y not whitespace), splits between two pre-tokens and
    BPE, which works within a pre-token, gives the same ids for the parts as
    for the whole. Python's str.isspace covers every character the regex's
    \\s matches, so "not isspace" errs on the safe side.
    """
    end = hi  # candidate cut positions are <= end
    while end >= lo:
        s = buf.rfind(b" ", lo, end + 1)  # cut before this space
        n = buf.rfind(b"\n", lo - 1, end)  # cut after this newline
        cut = max(s, n + 1 if n >= 0 else -1)
        if cut < lo:
            return None
        if cut == s and _solid_before(buf, s) and _solid_at(buf, s + 1) and not _ends_eot_line(buf, s):
            return s
        if n >= 0 and cut == n + 1 and _solid_before(buf, n) and _solid_at(buf, n + 1):
            return n + 1
        end = cut - 1
    return None


def _last_boundary(buf: bytearray, separator: DocSeparator, fmt: str, line_start: bool, start: int) -> int:
    """The end of the last document boundary in `buf`, or -1.

    Only boundaries ending after `start` + 16 are looked for: the bytes before
    were searched already (16 covers the longest boundary, "\n<|endoftext|>\r\n").
    """
    if fmt == "jsonl":
        i = buf.rfind(b"\n", start)
        return i + 1 if i >= 0 else -1
    if separator == "blank-line":
        a, b = buf.rfind(b"\n\n", start), buf.rfind(b"\n\r\n", start)
        return max(a + 2 if a >= 0 else -1, b + 3 if b >= 0 else -1)
    end = len(buf)
    while True:
        i = buf.rfind(_EOT, start, end)
        if i < 0:
            return -1
        at_line_start = (i == 0 and line_start) or (i > 0 and buf[i - 1] == 0x0A)
        j = i + len(_EOT)
        if buf[j : j + 1] == b"\r":
            j += 1
        if at_line_start and buf[j : j + 1] == b"\n":
            return j + 1
        end = i


class SourceReader:
    """Reads one source file into pieces; after exhaustion holds its size and sha256."""

    def __init__(self, source: SourceFile, index: int, separator: DocSeparator) -> None:
        self.source = source
        self.index = index
        self.separator = separator
        self._raw: _HashingReader | None = None
        self.size = 0
        self.sha256 = ""

    @property
    def raw_bytes_read(self) -> int:
        return self._raw.bytes if self._raw else 0

    def _blocks(self) -> Iterator[bytes]:
        src = self.source
        try:
            with open(src.path, "rb") as fh:
                self._raw = _HashingReader(fh)
                stream = gzip.GzipFile(fileobj=self._raw, mode="rb") if src.gzip else self._raw
                while block := stream.read(READ_BLOCK):
                    yield block
                # Hash to the end even if gzip stopped early, so sha256 covers the file.
                while self._raw.read(READ_BLOCK):
                    pass
        except (gzip.BadGzipFile, zlib.error, EOFError) as err:
            raise UserError(f"{src.label}: not a valid gzip file ({err or 'truncated'})") from None
        except OSError as err:
            raise UserError(f"{src.label}: cannot read ({err.strerror or err})") from None
        self.size = self._raw.bytes
        self.sha256 = self._raw.sha256.hexdigest()

    def pieces(self, piece_bytes: int | None = None, max_piece_bytes: int | None = None) -> Iterator[Piece]:
        piece_bytes = piece_bytes or PIECE_BYTES
        max_piece_bytes = max_piece_bytes or MAX_PIECE_BYTES
        src = self.source
        buf = bytearray()
        offset = 0  # stream offset of buf[0]
        line = 1
        continues = False
        line_start = True
        first = True
        for block in self._blocks():
            if first:
                if block.startswith(_BOM):  # a UTF-8 byte order mark is no text
                    block, offset = block[len(_BOM) :], len(_BOM)
                first = False
            nul = block.find(b"\x00")
            if nul >= 0:
                raise UserError(f"{src.label}: binary file (NUL byte at offset {offset + len(buf) + nul}), not text")
            scanned = max(0, len(buf) - 16)  # buf held no boundary before this block
            buf += block
            while len(buf) >= piece_bytes:
                cut = _last_boundary(buf, self.separator, src.format, line_start, scanned)
                open_end = False
                if cut <= 0:
                    if len(buf) < max_piece_bytes or src.format == "jsonl":
                        break  # read on: a boundary is probably near
                    cut = safe_cut(buf, max_piece_bytes // 4, len(buf) - 2) or -1
                    if cut <= 0:
                        break  # no safe point at all (one giant word): read on
                    open_end = True
                with memoryview(buf) as view:
                    data = bytes(view[:cut])  # one copy (bytes(buf[:cut]) makes two)
                del buf[:cut]
                scanned = max(0, len(buf) - 16)  # what is left after the last boundary holds none
                yield Piece(self.index, src.label, src.format, offset, line, data, continues, open_end, False)
                offset += len(data)
                if src.format == "jsonl":  # only JSON errors name a line; counting costs ~25% here
                    line += data.count(b"\n")
                continues = open_end
                line_start = data.endswith(b"\n")
        yield Piece(self.index, src.label, src.format, offset, line, bytes(buf), continues, False, True)
