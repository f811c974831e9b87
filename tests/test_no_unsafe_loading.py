"""No file may run code when loaded: the source never unpickles.

Scans every module under src/ (its syntax tree, so comments and strings do not
count) for the calls that can execute code from a file: pickle's and its
relatives' loaders, `torch.load` without `weights_only=True`, `np.load` with
`allow_pickle=True`, and loaders that unpickle underneath (`torch.jit.load`,
`from_pretrained`, which falls back to pytorch_model.bin pickles).
"""

from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO

SRC = REPO / "src"
# Modules whose every loader unpickles.
PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "jsonpickle"}
LOADERS = {"load", "loads", "Unpickler", "open"}  # shelve.open unpickles too


def _dotted(node: ast.AST) -> str:
    """`a.b.c` for a Name/Attribute chain, else ''."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def unsafe_loads(source: str, filename: str = "<source>") -> list[str]:
    """Each unsafe load in `source` as 'file:line: what'."""
    tree = ast.parse(source, filename)
    # import pickle as p / from pickle import loads as l: follow the aliases.
    aliases: dict[str, str] = {}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if not name:
            continue
        head, _, rest = name.partition(".")
        full = aliases.get(head, head) + (f".{rest}" if rest else "")
        module, _, func = full.rpartition(".")
        where = f"{filename}:{node.lineno}: {name}"
        if module.split(".")[0] in PICKLERS and func in LOADERS:
            found.append(f"{where} (unpickles)")
        elif full == "torch.load" and not _keyword_is(node, "weights_only", True):
            found.append(f"{where} without weights_only=True")
        elif full in ("numpy.load", "np.load") and _keyword_is(node, "allow_pickle", True):
            found.append(f"{where} with allow_pickle=True")
        elif full in ("torch.jit.load", "torch.package.PackageImporter") or func == "from_pretrained":
            found.append(f"{where} (can unpickle)")
    return found


def test_source_has_no_unsafe_loads():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 20, "src/ not found"
    found = []
    for path in files:
        found += unsafe_loads(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle\npickle.loads(b)",
        "import pickle as p\np.load(fh)",
        "from pickle import loads\nloads(b)",
        "from pickle import Unpickler as U\nU(fh).load()",
        "import torch\ntorch.load(path)",
        "import torch\ntorch.load(path, weights_only=False)",
        "from torch import load\nload(path, map_location='cpu')",
        "import numpy as np\nnp.load(path, allow_pickle=True)",
        "import joblib\njoblib.load(path)",
        "import shelve\nshelve.open(path)",
        "from transformers import GPT2LMHeadModel\nGPT2LMHeadModel.from_pretrained(d)",
    ],
)
def test_the_scan_finds_unsafe_loads(snippet):
    assert unsafe_loads(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load(path, weights_only=True)",
        "import numpy as np\nnp.load(path, mmap_mode='r', allow_pickle=False)",
        "import json\njson.loads(text)",
        "import pickle\npickle.dumps(obj)",
        "# torch.load(path)\nx = 'pickle.loads(b)'",
    ],
)
def test_the_scan_allows_safe_code(snippet):
    assert unsafe_loads(snippet) == []
