"""One piece of raw bytes -> its documents' GPT-2 tokens (runs in the workers).

Decoding, cutting into documents and BPE all happen here, in parallel; the
main process only stitches results together in order. What makes a document:

- text, `eot-line` (TinyStories' own layout): a line that is exactly
  `<|endoftext|>` ends a document; the line break before and after it belong
  to the separator, not to the documents.
- text, `blank-line`: one or more blank (whitespace-only) lines end a document;
  leading and trailing blank lines are dropped.
- jsonl: each record's `field` (default "text") is one document.

Documents that are empty or only whitespace are skipped (and counted). Every
document is tokenized on its own with `encode_ordinary` semantics (an
`<|endoftext|>` inside the text is plain text) and followed by the EOT id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from gpt2cli.data.sources import Piece
from gpt2cli.errors import UserError
from gpt2cli.jsonfile import parse_json_object
from gpt2cli.tokenizer import EOT_ID, EOT_TEXT, get_tokenizer

# A line that is exactly <|endoftext|> (CRLF files allowed), with the line break before
# it. Starting with a literal lets `re` jump between candidates (4x faster than `^...$`).
_EOT_LINE = re.compile(r"\n<\|endoftext\|>\r?(?=\n|\Z)")
# A line end followed by one or more blank lines.
_BLANK_LINES = re.compile(r"\n(?:[^\S\n]*\n)+")
_LEADING_BLANK = re.compile(r"\A(?:[^\S\n]*\n)+")
_TRAILING_BLANK = re.compile(r"(?:\r?\n[^\S\n]*)+\Z")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_FFFD = "\ufffd".encode()


@dataclass
class EncodedPiece:
    """Tokens of a piece's document parts, in order.

    Entry k covers `lengths[k]` tokens. The first entry continues the document
    left open by the previous piece when `continues`; the last one is left
    open (no EOT yet) when `open_end`. Every other entry is one whole
    document, EOT included.
    """

    source: int
    tokens: np.ndarray  # uint16
    lengths: np.ndarray  # int64, one per entry
    continues: bool
    open_end: bool
    nbytes: int
    replaced: int = 0
    skipped: int = 0
    error: str | None = None  # a UserError message (--strict, bad JSON); raised by the main process


def _strip_line_end(text: str) -> str:
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    return text


def _decode(piece: Piece, strict: bool) -> tuple[str, int, str | None]:
    """The piece's text, how many bad UTF-8 sequences were replaced, an error."""
    data = piece.data
    try:
        return data.decode("utf-8"), 0, None
    except UnicodeDecodeError as err:
        if strict:
            at = piece.offset + err.start
            return "", 0, f"{piece.label}: not valid UTF-8 at byte {at} (drop --strict to replace bad bytes with U+FFFD)"
    text = data.decode("utf-8", "replace")
    # Each bad sequence became one U+FFFD; genuine U+FFFD characters in the input are not counted.
    return text, text.count("\ufffd") - data.count(_FFFD), None


_EOT_SEPARATOR = "\n" + EOT_TEXT + "\n"


def _plain_eot_lines(text: str) -> bool:
    """Whether a plain split at "\n<|endoftext|>\n" cuts `text` exactly as _EOT_LINE does.

    The regex leaves the separator's closing "\n" to the next part (removed there) and
    also matches "\r\n" line ends and a separator that ends the text; str.split
    differs only when two separator lines touch (they share that "\n"), on "\r"
    and at the end of the text.
    """
    return "\r" not in text and EOT_TEXT + "\n" + EOT_TEXT not in text and not text.endswith(EOT_TEXT)


def _text_parts(text: str, piece: Piece, separator: str) -> list[str]:
    """The piece's document parts, before skipping empty ones."""
    if separator == "eot-line":
        # Pieces start at a line start, so a separator may open the text: give it a "\n" to match.
        if _plain_eot_lines(text):
            # With the removeprefix loop it replaces: 0.13 -> 0.08 s per 40 MB.
            parts = ("\n" + text).split(_EOT_SEPARATOR)
        else:
            parts = _EOT_LINE.split("\n" + text)
            for k in range(1, len(parts)):
                parts[k] = parts[k].removeprefix("\n")  # the separator's own line break
            if "\r" in text:
                for k in range(len(parts) - 1):
                    parts[k] = parts[k].removesuffix("\r")  # a CRLF break before the separator
        parts[0] = parts[0][1:]  # the "\n" given above
        if piece.file_end:
            parts[-1] = _strip_line_end(parts[-1])
        return parts
    parts = _BLANK_LINES.split(text)
    for k in range(len(parts) - 1):
        parts[k] = parts[k].removesuffix("\r")
    if not piece.continues:
        parts[0] = _LEADING_BLANK.sub("", parts[0])
    if piece.file_end:
        parts[-1] = _TRAILING_BLANK.sub("", parts[-1])
    return parts


def _jsonl_parts(text: str, piece: Piece, field_name: str) -> tuple[list[str], str | None]:
    parts = []
    for k, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        where = f"{piece.label} line {piece.line + k}"
        try:
            record = parse_json_object(line, where, f"a record with a {field_name!r} field")
        except UserError as err:
            return [], str(err)
        if field_name not in record:
            return [], f"{where}: no {field_name!r} field (choose the field with --field NAME)"
        value = record[field_name]
        if not isinstance(value, str):
            return [], f"{where}: field {field_name!r} is {type(value).__name__}, not a string"
        parts.append(value)
    return parts, None


def _keep(parts: list[str], piece: Piece) -> tuple[list[str], int]:
    """Drop empty and whitespace-only documents; returns the rest and how many were skipped.

    A part that continues or leaves open a document spanning pieces is always kept.
    """
    last = len(parts) - 1
    kept, skipped = [], 0
    for k, part in enumerate(parts):
        if part.strip() or (k == 0 and piece.continues) or (k == last and piece.open_end):
            kept.append(part)
        elif part or piece.format == "jsonl":
            skipped += 1  # "" between two separators is no document; an empty jsonl record is one
    return kept, skipped


def _encode_joined(parts: list[str], close_last: bool) -> np.ndarray | None:
    """All parts in one tiktoken call, joined by EOT; None if a part holds EOT text itself.

    tiktoken cuts its input at allowed special tokens and runs the regex and BPE
    on each stretch between them on its own, so this equals encode_ordinary
    of every part with an EOT id after each: one call per piece instead of one
    per document (the per-call overhead was ~10% of the time on short stories).
    """
    joined = EOT_TEXT.join(parts) + (EOT_TEXT if close_last else "")
    if joined.count(EOT_TEXT) != len(parts) - (0 if close_last else 1):
        return None  # a document contains "<|endoftext|>" as text: it must stay text
    return get_tokenizer().encode_to_numpy(joined, allowed_special={EOT_TEXT})


def _encode_each(parts: list[str], close_last: bool) -> np.ndarray:
    """One call per document, with encode_ordinary semantics (special-token text is text)."""
    enc = get_tokenizer()
    eot = np.array([EOT_ID], dtype=np.uint32)
    arrays = []
    for k, part in enumerate(parts):
        arrays.append(enc.encode_to_numpy(part, disallowed_special=()))
        if k < len(parts) - 1 or close_last:
            arrays.append(eot)
    return np.concatenate(arrays)


def encode_piece(
    piece: Piece, separator: str = "eot-line", field_name: str = "text", strict: bool = False
) -> EncodedPiece:
    """Decode, cut into documents and tokenize one piece."""
    out = EncodedPiece(piece.source, np.empty(0, np.uint16), np.empty(0, np.int64), piece.continues, piece.open_end, len(piece.data))
    text, out.replaced, out.error = _decode(piece, strict)
    if out.error:
        return out
    if piece.format == "jsonl":
        parts, out.error = _jsonl_parts(text, piece, field_name)
        if out.error:
            return out
    else:
        parts = _text_parts(text, piece, separator)
    parts, out.skipped = _keep(parts, piece)
    if not parts:
        return out
    close_last = not piece.open_end
    try:
        ids = _encode_joined(parts, close_last)
        if ids is None:
            ids = _encode_each(parts, close_last)
    except UnicodeEncodeError:
        # Lone surrogates (from JSON escapes) cannot be UTF-8: replace them like bad bytes.
        out.replaced += sum(len(_SURROGATE.findall(p)) for p in parts)
        parts = [_SURROGATE.sub("\ufffd", p) for p in parts]
        ids = _encode_joined(parts, close_last)
        if ids is None:
            ids = _encode_each(parts, close_last)
    # Document k ends at the k-th EOT (ordinary text never encodes to the EOT id).
    ends = np.flatnonzero(ids == EOT_ID) + 1
    if not close_last:
        ends = np.append(ends, len(ids))
    if len(ends) != len(parts):
        raise RuntimeError(f"{piece.label}: {len(parts)} documents but {len(ends)} ends")
    out.lengths = np.diff(ends, prepend=0).astype(np.int64)
    out.tokens = ids.astype("<u2")
    return out
