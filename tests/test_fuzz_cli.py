"""Random argument lists through every command: exit 0, 1 only as one "internal error" line naming a
crash report, or 2 with one "error:" line; never a traceback; never a changed pre-existing file.

Arguments mix each command's own flags with other commands' flags, unknown ones, bad numbers
(0, -1, 1e309, nan, inf, huge ints, words), and paths to prepared good and bad files. The run is
derandomized with a fixed number of examples, in-process (the CLI's `main`), so it is repeatable
and takes well under a minute.

Budgets: each command gets small work sizes first (--steps 2, --eval-tokens 64, ...); a flag drawn
later on the line overrides them, so the flags are still fuzzed, but valid values that would make
an example run for minutes (a million steps, --nproc that launches torchrun, --compile, the whole
demo) are left out of the pools.

Outputs point into each example's own scratch folder or at unwritable places; naming one of the
prepared inputs as an output is the output policy's concern (`OUTPUTS_MAY_NAME_INPUTS`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import run_cli
from tests.test_bad_input_matrix import NON_UTF8_ARG, build_fixtures

EXAMPLES = 180
OUTPUTS_MAY_NAME_INPUTS = True  # outputs are drawn from the prepared inputs too: the output policy refuses them

BAD_NUMBERS = ["0", "-1", "1e309", "-1e309", "nan", "inf", "-inf", "99999999999999999999999", "9007199254740993",
               "abc", "", "1e-9", "0x10", "0.5"]


def V(good: list[str], bad: list[str] | None = None) -> tuple[list[str], list[str]]:
    """A flag's values: good ones (kept small, so an example stays fast) and bad ones."""
    return good, BAD_NUMBERS if bad is None else bad


COUNT = V(["1", "2", "3"])


def _inputs(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    r = lambda *names: [str(root / n) for n in names]  # noqa: E731
    nu = str(root / NON_UTF8_ARG)
    return {
        "ckpt": V(r("ckpt.safetensors") + [nu + ".safetensors"],
                  r("small-vocab.safetensors", "truncated.safetensors", "foreign.safetensors", "pickle.pt",
                    "empty.safetensors", "bad-config.safetensors", "nan.safetensors", "missing.safetensors",
                    "folder", "notes.txt") + [nu + "-missing.safetensors"]),
        "data": V(r("data", "data-bad-index") + [nu + "-data"],
                  r("data-odd", "data-big-id", "data-bad-meta", "data-empty-meta", "missing-data", "notes.txt",
                    "folder")),
        "text": V(r("notes.txt") + [nu + ".txt"], r("empty.txt", "latin1.txt", "pickle.pt", "folder", "missing.txt")),
        "toml": V(r("tiny.toml"), r("latin1.toml", "folder.toml", "missing.toml", "bad-values.toml") + ["tiny.json"]),
        "hf": V(r("hf"), r("hf-bad-config", "hf-pickle", "hf-list-config", "hf-nan", "folder", "missing-hf",
                           "small-vocab.safetensors")),
    }


def _outputs(root: Path, inputs) -> tuple[list[str], list[str]]:
    good = ["out/a", "out.json", "o.png", "o.safetensors", NON_UTF8_ARG + ".out"]
    bad = [str(root / "notes.txt" / "x"), str(root / "folder")]
    if OUTPUTS_MAY_NAME_INPUTS:  # an existing file as an output: refused by the output policy, not overwritten
        bad += [p for good_bad in inputs.values() for pool in good_bad for p in pool]
    return good, bad


SETS = V(["train.batch_size=2", "train.steps=2", "model.dropout=0.1", "train.lr=0.01"],
         ["model.block_size=1000000000", "train.lr=inf", "train.seed=-1", "model.n_layer=0", "model.dropout=nan",
          "model.vocab_size=1", "model.n_head=3", "nonsense", "model.x=1", "train.block_size=99999999999",
          "train.batch_size=100000000"])
SWITCH = None


def commands(root: Path) -> dict[str, tuple[list[str], list, dict]]:
    """command -> (fixed small-budget prefix, positional pools, {flag: (good, bad) values or SWITCH})."""
    i = _inputs(root)
    outs = _outputs(root, i)
    sampling = {"--temperature": V(["0", "0.7", "1"]), "--top-k": V(["1", "40"]), "--top-p": V(["0.9", "1"]),
                "--repetition-penalty": V(["1", "1.3"]), "--seed": V(["0", "7"]),
                "--device": V(["cpu", "auto"], ["cuda", "mps", "tpu"])}
    return {
        "tokenize": (["tokenize", "--workers", "1"], [V(i["text"][0], i["text"][1] + i["data"][0])],
                     {"-o": outs, "--val-fraction": V(["0.1", "0.5"]), "--workers": V(["1", "2"]),
                      "--shard-tokens": V(["1000", "5000"]), "--field": V(["text"], ["x"]),
                      "--doc-separator": V(["eot-line", "blank-line"], ["x"]), "--seed": V(["1"]),
                      "--strict": SWITCH, "--force": SWITCH, "--json": SWITCH,
                      "--builtin-stories": V(["20KB"], ["0", "abc", "1e309", "-5", "1 KB"])}),
        "train": (["train", "--preset", str(root / "tiny.toml"), "--steps", "2", "--device", "cpu", "--out", "run2",
                   "--data", str(root / "data")], [],
                  {"--preset": i["toml"], "--attention": V(["standard", "linear", "gated"], ["x"]),
                   "--data": i["data"], "--out": V(["run", "run3"], outs[1]), "--steps": COUNT,
                   "--batch-size": COUNT, "--block-size": V(["8", "16"]), "--grad-accum": COUNT, "--lr": V(["0.01"]),
                   "--dtype": V(["auto", "fp32", "bf16", "fp16"], ["x"]), "--device": V(["cpu"], ["cuda", "x"]),
                   "--eval-every": COUNT, "--save-every": COUNT, "--resume": SWITCH, "--seed": V(["3"]),
                   "--set": SETS, "--skip-nonfinite": V(["0", "2"]), "--peak-tflops": V(["0", "100"]),
                   "--nproc": V([], ["0", "-1", "abc", "100000", "nan"])}),
        "generate": (["generate", "--max-new-tokens", "3", "--device", "cpu", "--seed", "1", "--ckpt",
                      str(root / "ckpt.safetensors")],
                     [V(["hi", "", "<|endoftext|>", "hi " * 40], [NON_UTF8_ARG])],
                     {"--ckpt": i["ckpt"], "--max-new-tokens": COUNT, "--num-samples": V(["1", "3"],
                                                                                         ["0", "100000000"]),
                      "--stop": V(["x", "\n"], [""]), "--json": SWITCH, "--dtype": V(["auto", "fp32", "bf16"], ["x"]),
                      **sampling}),
        "eval": (["eval", "--eval-tokens", "64", "--num-samples", "2", "--max-new-tokens", "4", "--extract-windows",
                  "2", "--prompt-tokens", "4", "--suffix-tokens", "4", "--device", "cpu", "--data",
                  str(root / "data")], [i["ckpt"]],
                 {"--data": i["data"], "--json": V(outs[0] + ["-"], outs[1]), "--eval-tokens": V(["32", "100"]),
                  "--gap-margin": V(["0", "0.5"]), "--num-samples": V(["1", "3"], ["0", "100000000", "nan"]),
                  "--max-new-tokens": COUNT, "--prompts": i["text"], "--extract-windows": COUNT,
                  "--prompt-tokens": COUNT, "--suffix-tokens": COUNT,
                  "--dtype": V(["auto", "fp32", "bf16"], ["x"]), **sampling}),
        "inspect model": (["inspect", "model"], [i["ckpt"]],
                          {"--preset": V(i["toml"][0] + ["tiny", "large"], i["toml"][1]), "--json": SWITCH}),
        "inspect heads": (["inspect", "heads", "--tokens", "64", "--ablation-tokens", "32", "--induction-seqs", "1",
                           "--device", "cpu", "--data", str(root / "data")], [i["ckpt"]],
                          {"--data": i["data"], "--text": i["text"], "--tokens": V(["16", "64"]),
                           "--seq-len": V(["4", "8"]), "--ablation-tokens": V(["8", "16"]),
                           "--induction-seqs": COUNT, "--seed": V(["1"]), "--device": V(["cpu"], ["cuda"]),
                           "--json": V(outs[0] + ["-"], outs[1]), "--png": outs}),
        "inspect attention": (["inspect", "attention", "--device", "cpu"],
                              [i["ckpt"], V(["the cat", "a b c d"], ["", NON_UTF8_ARG, "hi " * 60])],
                              {"--layer": V(["0", "1"], BAD_NUMBERS + ["2"]), "--head": V(["0", "1"]),
                               "--png": outs, "--device": V(["cpu"], ["x"])}),
        "convert from-hf": (["convert", "from-hf"], [i["hf"], outs], {}),
        # An empty directory is a fine place for to-hf's files, so "folder" is no bad output here.
        "convert to-hf": (["convert", "to-hf"], [i["ckpt"], V(["hf-out", NON_UTF8_ARG + "-hf"],
                                                             [p for p in outs[1] if not p.endswith("folder")])], {}),
        "report": (["report"], [V(["run"], [str(root / "data"), "missing-run", str(root / "notes.txt")])],
                   {"-o": outs}),
        # The whole demo takes minutes: it is fuzzed with values refused before it starts (--steps 0 first).
        "demo": (["demo", "--steps", "0"], [], {"--out": V([], [str(root / "notes.txt"), str(root / "notes.txt" / "x")]),
                                                "--steps": V([], ["0", "-1", "nan", "abc", "1e309"]),
                                                "--minutes": V([], ["0", "-1", "nan", "inf"]),
                                                "--corpus-size": V([], ["0", "abc", "-1", "1e309", "10"])}),
    }


def build_fuzz_fixtures(root: Path) -> None:
    """The bad-input matrix's folder (NaN weights, names that are not UTF-8, a damaged cache...) and a few more."""
    build_fixtures(root)
    shutil.copy(root / "notes.txt", root / (NON_UTF8_ARG + ".txt"))
    (root / "bad-values.toml").write_text("[train]\nlr = inf\nseed = -4\n", encoding="utf-8")
    # A run dir for report and --resume (copied into each example's scratch folder).
    r = run_cli("train", "--preset", root / "tiny.toml", "--data", root / "data", "--out", root / "run-template",
                "--device", "cpu", "--steps", "2")
    assert r.code == 0, r.err


def _named(path: str, args: list[str]) -> bool:
    """Is `path` (or a folder above it) named on the command line?"""
    return any(a and (path == os.path.abspath(a) or path.startswith(os.path.abspath(a) + os.sep)) for a in args)


def _check_files(before: dict[str, str], after: dict[str, str], code: int, args: list[str]) -> None:
    """Prepared files stay byte-identical; only --force may replace one, and only one named as an output.
    New files appear only where the command line named an output, and only when it succeeded."""
    shown = " ".join(args)
    forced = "--force" in args and code == 0
    changed = [p for p in before if after.get(p) != before[p] and not (forced and _named(p, args))]
    assert not changed, f"prepared files changed or removed by: {shown}\n{changed[:5]}"
    added = [p for p in after if p not in before]
    assert not added or (code == 0 and all(_named(p, args) for p in added)), f"left behind by {shown}: {added[:5]}"


def _digests(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".ngram_index"]  # a cache, rebuilt when damaged
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[path] = hashlib.file_digest(fh, "sha256").hexdigest()
    return out


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    build_fuzz_fixtures(root)
    return root, _digests(root)


@st.composite
def argument_lists(draw, spec):
    name = draw(st.sampled_from(sorted(spec)))
    prefix, positionals, flags = spec[name]
    others = sorted({f for _, _, fl in spec.values() for f in fl} - set(flags))

    def value(pool):
        good, bad = pool
        use_good = good and (not bad or draw(st.integers(0, 3)) > 0)  # mostly good: the deep paths run too
        return draw(st.sampled_from(good if use_good else bad))

    args = list(prefix)
    for pool in positionals:
        if draw(st.integers(0, 9)):  # now and then a positional is left out
            args.append(value(pool))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.integers(0, 9))
        if flags and kind < 8:
            flag = draw(st.sampled_from(sorted(flags)))
            pool = flags[flag]
        else:  # another command's flag or none at all, with a number or nothing
            flag = draw(st.sampled_from(others + ["--bogus", "-x"]))
            pool = V([], BAD_NUMBERS) if kind == 8 else SWITCH
        args.append(flag)
        if pool is not SWITCH:
            args.append(value(pool))
    return name, args


def _check(code: int, out: str, err: str, args: list[str]) -> None:
    shown = " ".join(args)
    assert "Traceback" not in err, f"traceback for {shown}:\n{err}"
    lines = [line for line in err.splitlines() if line.strip()]
    if code == 0:
        return
    assert lines, f"exit {code} and nothing on stderr for {shown}"
    last = lines[-1]
    if code == 1:
        assert last.startswith("internal error: ") and "(details in " in last, f"{shown}: {err}"
        report = last.split("(details in ", 1)[1].split(")", 1)[0]
        assert Path(report).is_file()
        pytest.fail(f"a bug: {shown}\n{last}\n{Path(report).read_text()[-2500:]}")
    assert code == 2, f"exit {code} for {shown}: {err}"
    assert last.startswith("error: ") and sum(line.startswith("error: ") for line in lines) == 1, f"{shown}: {err}"


def test_fuzz_every_command(fixtures, monkeypatch):
    root, before = fixtures
    before = dict(before)
    spec = commands(root)
    crash_home = Path(tempfile.mkdtemp(prefix="gpt2cli-fuzz-cache-"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(crash_home))
    torch.set_num_threads(1)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(argument_lists(spec))
    def run(example):
        _, args = example
        scratch = Path(tempfile.mkdtemp(prefix="gpt2cli-fuzz-"))
        try:
            shutil.copytree(root / "run-template", scratch / "run")
            r = run_cli(*args, cwd=scratch)
            _check(r.code, r.out, r.err, args)
            after = _digests(root)
            _check_files(before, after, r.code, args)
            before.clear()  # an output a command was told to write is part of the folder from now on
            before.update(after)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    try:
        run()
    finally:
        shutil.rmtree(crash_home, ignore_errors=True)
