"""Every numeric option of every command has its range in gpt2cli.bounds, and the CLI applies it."""

from __future__ import annotations

import pytest

from gpt2cli.bounds import RULES, check, cores, rules_for
from gpt2cli.cli.app import command
from gpt2cli.errors import UserError


def _numeric_options(cmd, path=""):
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _numeric_options(sub, f"{path} {name}".strip())
    for param in cmd.params:
        if param.type_descriptor.annotation in (int, float):
            yield path, max(param.opts, key=len), param


def test_every_numeric_option_has_a_range_and_is_checked():
    options = list(_numeric_options(command()))
    assert len(options) > 30
    for path, flag, param in options:
        assert rules_for(flag, path) is not None, f"gpt2 {path} {flag}: no entry in gpt2cli.bounds.RULES"
        assert param.callback is not None, f"gpt2 {path} {flag}: not checked as it is parsed"
    flags = {flag for _, flag, _ in options}
    unused = {key.split()[-1] for key in RULES} - flags
    assert not unused, f"RULES for flags no command has: {unused}"


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_floats_are_refused_for_every_float_flag(value):
    for path, flag, param in _numeric_options(command()):
        if param.type_descriptor.annotation is float:
            with pytest.raises(UserError, match="must be a finite number"):
                check(flag, value, path)


def test_workers_scale_with_the_cores():
    check("--workers", 4 * cores())
    with pytest.raises(UserError, match=f"must be at most {4 * cores()} "):
        check("--workers", 4 * cores() + 1)


def test_library_options_meet_the_same_limits(tmp_path):
    from gpt2cli.data.shards import TokenizeOptions
    from gpt2cli.generation import SamplingConfig

    with pytest.raises(UserError, match="--shard-tokens 10: must be at least 1000"):
        TokenizeOptions(out_dir=tmp_path, shard_tokens=10, workers=1)
    with pytest.raises(UserError, match="--repetition-penalty inf: must be a finite number"):
        SamplingConfig(repetition_penalty=float("inf"))
    with pytest.raises(UserError, match="--temperature nan: must be a finite number"):
        SamplingConfig(temperature=float("nan"))
