"""Where the built-in presets live and what they are called: one per presets/*.toml.

Apart from config.py so that --help can list them without importing pydantic.
"""

from __future__ import annotations

import functools
import math
import tomllib
from importlib import resources
from pathlib import Path


def builtin_preset_dir() -> Path:
    packaged = resources.files("gpt2cli") / "presets"
    if packaged.is_dir():
        return Path(str(packaged))
    # Editable install: the presets live at the repository's top level.
    return Path(__file__).resolve().parents[2] / "presets"


@functools.cache
def preset_names() -> tuple[str, ...]:
    """The built-in presets, smallest model first.

    Read from the directory, so a preset added there shows in --help and in
    the error messages with no list to keep in step. A preset without a model
    shape of its own (finetune takes it from --init-from) comes last.
    """

    def size(path: Path) -> tuple[float, str]:
        model = tomllib.loads(path.read_text(encoding="utf-8")).get("model", {})
        return (model.get("n_layer", 0) * model.get("n_embd", 0) ** 2 or math.inf, path.stem)

    return tuple(p.stem for p in sorted(builtin_preset_dir().glob("*.toml"), key=size))
