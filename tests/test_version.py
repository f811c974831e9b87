"""`gpt2 --version`: the package's version (pyproject's), torch's and python's, without loading torch."""

from __future__ import annotations

import platform
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from gpt2cli import __version__
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_version_names_the_package_torch_and_python():
    expected = f"gpt2cli {__version__} (torch {metadata.version('torch')}, python {platform.python_version()})"
    for flag in ("--version", "-V"):
        res = run_cli(flag)
        assert res.code == 0, res.err
        assert res.out.strip() == expected
    # One version: the code's matches the one pip installs.
    assert __version__ == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_version_answers_without_importing_torch():
    code = (
        "import sys\n"
        "from gpt2cli.cli.app import main\n"
        "try:\n    main(['--version'])\nexcept SystemExit as e:\n    code = e.code\n"
        "print(code, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"gpt2cli {__version__} (torch ")
    assert lines[-1] == "0 False"
