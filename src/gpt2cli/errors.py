"""The one error type for the user's mistakes (STYLE.md §8).

Raised anywhere in the library; the CLI catches it once, prints its message as
one line on stderr and exits with code 2. Anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """Bad input or usage: a missing file, a foreign checkpoint, a bad flag value."""
