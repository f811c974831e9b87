"""Human byte sizes ("20MB", "1.5GB", "500KiB") for flags like --builtin-stories."""

from __future__ import annotations

import re

from gpt2cli.errors import UserError

# Decimal units as disk makers and `ls -h --si` count them; binary ones spelled out (KiB…).
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*")


def parse_size(text: str, what: str = "size") -> int:
    """Bytes in `text`: a number with an optional unit (B, KB, MB, GB, KiB, MiB, GiB).

    `what` names the flag in the error message, e.g. "--builtin-stories".
    """
    match = _SIZE.fullmatch(str(text).lower())
    if not match or match.group(2) not in _UNITS:
        raise UserError(f"{what} {text!r}: expected a size such as 500KB, 20MB or 1.5GB")
    value = int(float(match.group(1)) * _UNITS[match.group(2)])
    if value <= 0:
        raise UserError(f"{what} {text!r}: must be more than zero bytes")
    return value


def format_size(n: float) -> str:
    """`n` bytes as "1.2 MB" (decimal units, like parse_size's)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
