"""`gpt2 report`: a real short training run turned into one HTML page, checked panel by panel;
loops in samples against a brute-force finder; partial and synthetic runs; bad input; and
the page rendered in headless Chromium when it is installed."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import random
import re
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt2cli.analysis.alarms import mismatch_alarm
from gpt2cli.errors import UserError
from gpt2cli.report.build import PANEL_IDS
from gpt2cli.report.history import all_loops, char_span, generation_history, sample_views
from gpt2cli.report.load import load_run
from gpt2cli.tokenizer import get_tokenizer
from tests.conftest import CliResult, run_cli

CHROMIUM = Path("/usr/bin/chromium")
IMAGE_PANELS = ("loss", "generation", "overfitting", "heads")  # "samples" is text
DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')

TRAIN_ARGS = [
    "--preset", "tiny", "--steps", "12", "--batch-size", "2", "--block-size", "32",
    "--set", "model.n_layer=2", "--set", "model.n_embd=32", "--set", "model.n_head=2",
    "--set", "model.block_size=32", "--set", "train.sample_tokens=32", "--set", "train.eval_batches=1", "--set", "train.eval_samples=3",
    "--set", "train.log_every=1", "--set", "train.warmup_steps=2",
    "--eval-every", "3", "--save-every", "6", "--dtype", "fp32", "--device", "cpu",
]


def run_report(*args: str) -> CliResult:
    """`gpt2 report ARGS` in process: through the app once it registers the command, else
    through an app holding only it, with the same one-line handling of UserError."""
    from gpt2cli.cli.app import app

    if any(c.name == "report" for c in app.registered_commands):
        return run_cli("report", *args)
    import typer

    from gpt2cli.cli import report

    local = typer.Typer(pretty_exceptions_enable=False)
    local.callback()(lambda: None)  # keep "report" a subcommand
    report.register(local)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            local(args=["report", *map(str, args)])
        except UserError as e:
            print(f"error: {e}", file=err)
            code = 2
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0
    return CliResult(code, out.getvalue(), err.getvalue())


def decode_png(data: bytes) -> np.ndarray:
    import matplotlib.image

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(io.BytesIO(data), format="png")


def embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in DATA_URI.findall(html)]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A short real run: tokenize, train (evals with samples), eval and inspect heads on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small gains nothing from threads; OpenMP spinning on a busy box costs 10x
    try:
        root = tmp_path_factory.mktemp("report")
        data, run = root / "data", root / "run"
        r = run_cli("tokenize", "--builtin-stories", "200KB", "-o", data)
        assert r.code == 0, r.err
        r = run_cli("train", "--data", data, "--out", run, *TRAIN_ARGS)
        assert r.code == 0, r.err
        r = run_cli(
            "eval", run / "ckpt.safetensors", "--data", data, "--eval-tokens", "256", "--num-samples", "2",
            "--max-new-tokens", "16", "--extract-windows", "4", "--prompt-tokens", "8", "--suffix-tokens", "8",
            "--device", "cpu",
        )
        assert r.code == 0, r.err
        assert (run / "eval.json").is_file()  # gpt2 eval saves into the run dir by itself
        r = run_cli(
            "inspect", "heads", run / "ckpt.safetensors", "--data", data, "--tokens", "256", "--seq-len", "32",
            "--ablation-tokens", "64", "--induction-seqs", "2", "--device", "cpu",
        )
        assert r.code == 0, r.err
        assert (run / "heads.json").is_file()  # inspect heads saves into the run dir by itself
        r = run_report(run, "-o", root / "report.html")
        assert r.code == 0, r.err
        yield run, root / "report.html", r
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_report_of_a_real_run_has_every_panel_and_decodable_images(real_run):
    run, page, result = real_run
    assert f"wrote {page}" in result.out
    html = page.read_text(encoding="utf-8")
    for panel in PANEL_IDS:
        assert f'<section id="panel-{panel}">' in html, panel
    # Nothing is missing: the run finished, and eval.json and heads.json are there.
    assert "<h2>Missing</h2>" not in html and 'class="missing"' not in html
    assert "finished: 12 of 12 steps" in html
    images = embedded_pngs(html)
    assert len(images) == len(IMAGE_PANELS)
    for panel, data in zip(IMAGE_PANELS, images, strict=True):
        pixels = decode_png(data)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 600 and pixels[..., :3].std() > 0.05, panel
        # The PNG beside the page is the same picture.
        assert (page.parent / f"report-{panel}.png").read_bytes() == data
    # Self-contained: no script, every link and image is inside the page.
    assert "<script" not in html.lower()
    for ref in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert ref.startswith(("data:image/png;base64,", "#")), ref


@pytest.mark.slow
def test_report_figures_match_the_run_files(real_run):
    run, page, _ = real_run
    html = page.read_text(encoding="utf-8")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [0, 3, 6, 9, 12]
    last = evals[-1]
    assert f"val loss {last['val_loss']:.4f} at step 12" in html
    assert f"gap at step 12: {last['val_loss'] - last['train_loss']:+.4f} nats" in html
    heads = json.loads((run / "heads.json").read_text())
    assert f"Gini {heads['inequality']['gini']:.2f}" in html
    # Every sample of every eval is on the page, prompt and text (escaped).
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 5 * 3
    assert html.count('<div class="sample">') == len(samples)
    for step in (0, 3, 6, 9, 12):
        assert f'id="samples-step-{step}"' in html


def naive_loop_exists(tokens: list[int], min_repeats: int = 4, max_period: int = 32, min_tokens: int = 8) -> bool:
    """Brute force: some span of p tokens repeated back to back min_repeats times, over min_tokens tokens."""
    n = len(tokens)
    for p in range(1, max_period + 1):
        reps = max(min_repeats, -(-min_tokens // p))
        for s in range(0, n - p * reps + 1):
            unit = tokens[s : s + p]
            if all(tokens[s + k * p : s + (k + 1) * p] == unit for k in range(reps)):
                return True
    return False


def naive_seq_rep_4(tokens: list[int]) -> float | None:
    grams = [tuple(tokens[i : i + 4]) for i in range(len(tokens) - 3)]
    return 1 - len(set(grams)) / len(grams) if grams else None


@pytest.mark.slow
def test_generation_history_of_the_real_run_against_naive_figures(real_run):
    run, _, _ = real_run
    data = load_run(run)
    history = generation_history(data)
    assert [p.step for p in history.points] == [0, 3, 6, 9, 12]
    if any("seq_rep_4" in r for r in data.evals):
        # The trainer logged the figures: the report shows exactly those.
        assert history.source == "logged"
        for p, r in zip(history.points, data.evals, strict=True):
            assert (p.seq_rep_4, p.loop_share) == (r.get("seq_rep_4"), r.get("loop_share"))
        return
    # Derived from samples.jsonl: against naive seq-rep-4 and a brute-force loop search.
    assert history.source == "samples"
    enc = get_tokenizer()
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    for p in history.points:
        mine = [enc.encode_ordinary(s["text"]) for s in samples if s["step"] == p.step]
        reps = [v for v in map(naive_seq_rep_4, mine) if v is not None]
        assert p.seq_rep_4 == pytest.approx(sum(reps) / len(reps))
        assert p.loop_share == pytest.approx(sum(map(naive_loop_exists, mine)) / len(mine))
        ents = [s["mean_entropy"] for s in samples if s["step"] == p.step]
        assert p.mean_entropy == pytest.approx(sum(ents) / len(ents), rel=1e-6)


def test_all_loops_leaves_no_loop_in_the_gaps():
    rng = random.Random(0)
    for _ in range(200):
        tokens = [rng.randrange(6) for _ in range(rng.randrange(0, 60))]
        # plant a few loops
        for _ in range(rng.randrange(0, 3)):
            unit = [rng.randrange(6) for _ in range(rng.randrange(1, 5))]
            at = rng.randrange(0, len(tokens) + 1)
            tokens[at:at] = unit * rng.randrange(3, 6)
        loops = all_loops(tokens)
        covered = [False] * len(tokens)
        for lp in loops:
            unit = tokens[lp.start : lp.start + lp.period]
            assert lp.repeats >= 3
            assert tokens[lp.start : lp.start + lp.length] == unit * lp.repeats
            assert not any(covered[lp.start : lp.start + lp.length])  # no overlaps
            covered[lp.start : lp.start + lp.length] = [True] * lp.length
        # Between (and around) the loops found, brute force finds no loop.
        gap: list[int] = []
        for tok, c in zip([*tokens, None], [*covered, True], strict=True):
            if c:
                assert not naive_loop_exists(gap), (tokens, loops, gap)
                gap = []
            else:
                gap.append(tok)
        assert naive_loop_exists(tokens) == bool(loops)


def test_loop_highlight_spans_whole_characters():
    enc = get_tokenizer()
    text = "Ünïcode: 🙂🙂🙂🙂🙂 and the wave wave wave wave wave wave wave wave. Fin"
    tokens = enc.encode_ordinary(text)
    loops = all_loops(tokens)
    assert len(loops) == 2
    spans = sorted(char_span(text, tokens, lp.start, lp.start + lp.length) for lp in loops)
    marked = [text[a:b] for a, b in spans]
    assert set(marked[0]) == {"🙂"} and len(marked[0]) >= 3  # whole emoji, never half of one
    assert marked[1].split() == ["wave"] * len(marked[1].split()) and len(marked[1].split()) >= 3
    # The spans agree with decoding the tokens up to the loop (a whole-character prefix here).
    for lp, (a, _) in zip(sorted(loops, key=lambda x: x.start), spans, strict=True):
        assert text[:a] == enc.decode(tokens[: lp.start]).rstrip("\ufffd")


def write_jsonl(path: Path, records: list[dict], tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")


def test_report_of_a_run_still_training_says_what_is_missing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": {"n_layer": 2}, "train": {"steps": 100}, "data": "d"}))
    records = [
        {"step": s, "loss": 10 - 0.05 * s, "lr": 1e-3 * min(1, s / 5), "tokens_seen": 64 * s, "grad_norm": 1.0}
        for s in range(1, 21)
    ]
    write_jsonl(run / "metrics.jsonl", records, tail='{"step": 21, "loss": 9.')  # mid-write
    r = run_report(run)
    assert r.code == 0, r.err
    page = run / "report.html"
    html = page.read_text(encoding="utf-8")
    for panel in PANEL_IDS:
        assert f'<section id="panel-{panel}">' in html
    assert "partial: step 20 of 100" in html
    assert "metrics.jsonl: skipped 1 unreadable line(s)" in html
    assert len(embedded_pngs(html)) == 1  # only the loss panel has data
    decode_png(embedded_pngs(html)[0])
    for words in ("no eval yet", "no eval.json", "no heads.json", "no samples yet"):
        assert words in html and words in r.err
    assert "using output:" in r.err  # the default output is named
    # A panel without a picture leaves no PNG from an earlier report beside the page.
    assert sorted(p.name for p in run.glob("report-*.png")) == ["report-loss.png"]


def test_samples_only_run_recomputes_the_mismatch_alarm(tmp_path):
    """Evals without generation figures: they come from the samples, and the alarm marks
    the eval where val loss fell while the samples started looping."""
    run = tmp_path / "run"
    run.mkdir()
    steps = [0, 100, 200, 300, 400]
    write_jsonl(run / "metrics.jsonl", [
        {"step": s, "val_loss": 6.0 - s / 100, "train_loss": 5.9 - s / 100, "tokens_seen": 1000 * s} for s in steps
    ])
    # Eight samples per eval: the alarm's smallest count to decide (alarms.MIN_SAMPLES).
    fresh = ["The dog ran to the park and met a cat.", "A girl found a red ball under the old tree."] * 4
    loopy = ["The dog ran ran ran ran ran ran ran ran.", "A girl found a ball ball ball ball ball ball ball ball."] * 4
    samples = [
        {"step": s, "prompt": f"p{i}", "text": t, "mean_entropy": 3.0 - s / 400, "stop_reason": "length"}
        for s in steps
        for i, t in enumerate(fresh if s < 300 else loopy)
    ]
    write_jsonl(run / "samples.jsonl", samples)
    r = run_report(run, "-o", tmp_path / "r.html")
    assert r.code == 0, r.err
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    # The same alarm, over the same figures computed naively, fires at the same evals.
    enc = get_tokenizer()
    history, expected = [], []
    for s in steps:
        toks = [enc.encode_ordinary(x["text"]) for x in samples if x["step"] == s]
        reps = [naive_seq_rep_4(t) for t in toks]
        history.append({"step": s, "val_loss": 6.0 - s / 100, "seq_rep_4": sum(reps) / len(reps),
                        "loop_share": sum(map(naive_loop_exists, toks)) / len(toks),
                        "n_samples": len(toks), "loop_count": sum(map(naive_loop_exists, toks)),
                        "seq_rep_4_sd": statistics.stdev(reps)})
        if (alarm := mismatch_alarm(history)) is not None:
            expected.append((s, alarm))
    assert [s for s, _ in expected] == [300, 400]
    for s, alarm in expected:
        assert f"step {s}: {alarm}".replace("'", "&#x27;") in html
    # The loops are highlighted in the samples of steps 300 and 400 only.
    assert html.count('<mark class="loop"') == 16
    assert '<mark class="loop" title="1-token unit repeated 8 times">' + " ran" * 8 + "</mark>" in html


def test_logged_generation_figures_and_alarm_are_used(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "metrics.jsonl", [
        {"step": 0, "val_loss": 5.0, "train_loss": 5.0, "seq_rep_4": 0.01, "loop_share": 0.0, "mean_entropy": 4.0},
        {"step": 50, "val_loss": 4.0, "train_loss": 3.8, "seq_rep_4": 0.3, "loop_share": 0.5, "mean_entropy": 2.0,
         "mismatch": "loss–generation mismatch: logged by the trainer"},
    ])
    data = load_run(run)
    history = generation_history(data, sample_views(data))
    assert history.source == "logged"
    assert [(p.step, p.seq_rep_4, p.loop_share, p.mean_entropy) for p in history.points] == [
        (0, 0.01, 0.0, 4.0), (50, 0.3, 0.5, 2.0)
    ]
    r = run_report(run)
    assert r.code == 0, r.err
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "step 50: loss–generation mismatch: logged by the trainer" in html
    assert "gap at step 50: +0.2000 nats" in html


def test_without_run_dir_the_newest_run_is_reported(tmp_path, monkeypatch):
    from gpt2cli.checkpoint import save_checkpoint
    from tests.conftest import tiny_model

    for name, step in (("old", 3), ("new", 7)):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        save_checkpoint(tiny_model(), run / "ckpt.safetensors", step=str(step), tokens_seen=str(64 * step))
        write_jsonl(run / "metrics.jsonl", [{"step": step, "loss": 3.0, "lr": 1e-3, "tokens_seen": 64 * step}])
    monkeypatch.chdir(tmp_path)
    r = run_report()
    assert r.code == 0, r.err
    assert "using run dir: runs/new" in r.err
    html = (tmp_path / "runs" / "new" / "report.html").read_text(encoding="utf-8")
    assert "ckpt.safetensors: step 7, 448 tokens seen" in html  # from the checkpoint's metadata
    assert not (tmp_path / "runs" / "old" / "report.html").exists()


def test_damaged_or_foreign_files_are_noted_not_fatal(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "metrics.jsonl", [
        {"step": 1, "loss": 3.0}, {"step": 2, "val_loss": float("nan"), "train_loss": 2.0}, {"no": "step"},
    ])
    (run / "config.json").write_text("{not json")
    (run / "eval.json").write_text(json.dumps({"format": "gpt2cli-eval/1", "checkpoint": "?", "memorization": []}))
    (run / "eval-old.json").write_text(json.dumps({"something": "else"}))
    (run / "heads.json").write_text(json.dumps({"grids": [1], "inequality": {"lorenz": 3}, "n_layer": 1, "n_head": 1}))
    (run / "ckpt.safetensors").write_bytes(b"not a checkpoint")
    (run / "samples.jsonl").write_text('{"step": 2, "prompt": "<b>", "text": "<script>x</script> a a a a a a a a"}\n')
    r = run_report(run)
    assert r.code == 0, r.err
    html = (run / "report.html").read_text(encoding="utf-8")
    for panel in PANEL_IDS:
        assert f'<section id="panel-{panel}">' in html
    assert "config.json: not valid JSON" in html
    assert "eval-old.json: not a `gpt2 eval` result" in html
    assert "metrics.jsonl: skipped 1 unreadable line(s)" in html
    assert "heads.json: has no zero-ablation grid or Lorenz curve" in html
    assert "<script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html  # run text is escaped
    assert '<mark class="loop" title="1-token unit repeated 8 times"> a a a a a a a a</mark>' in html


@pytest.mark.parametrize("case", ["missing", "empty", "file"])
def test_bad_run_dir_exits_2_with_one_line(tmp_path, case):
    target = tmp_path / "runs" / "nope"
    if case == "empty":
        target.mkdir(parents=True)
    elif case == "file":
        target.parent.mkdir(parents=True)
        target.write_text("x")
    r = run_report(target)
    assert r.code == 2
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: RUN_DIR {target}:"), r.err
    assert "Traceback" not in r.err
    assert not (target / "report.html").exists()


def test_output_in_a_missing_directory_exits_2(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "metrics.jsonl", [{"step": 1, "loss": 3.0}])
    r = run_report(run, "-o", tmp_path / "no" / "such" / "r.html")
    assert r.code == 2 and r.err.startswith("error: -o ") and len(r.err.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(real_run, tmp_path):
    _, page, _ = real_run
    shot = tmp_path / "screenshot.png"
    subprocess.run(
        [
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2400",
            page.resolve().as_uri(),
        ],
        check=True, capture_output=True, timeout=120,
    )
    pixels = decode_png(shot.read_bytes())
    assert pixels.shape[:2] == (2400, 1280)
    rgb = pixels[..., :3]
    assert rgb.std() > 0.05  # not a blank page
    # The figures are drawn: a good share of the page is neither white nor near-white.
    # The figures are drawn: the real-run page inks about 5% of its pixels.
    assert (rgb.min(axis=-1) < 0.9).mean() > 0.03


def test_report_again_replaces_only_its_own_files(tmp_path):
    """Its own page and PNGs are replaced freely (they are not its inputs); a file named by -o only with --force."""
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "metrics.jsonl", [{"step": s, "loss": 5.0 - 0.1 * s, "lr": 1e-3} for s in range(1, 6)])
    assert run_report(run).code == 0
    first = (run / "report-loss.png").read_bytes()
    r = run_report(run)  # a second report of the same run
    assert r.code == 0, r.err
    # -o naming the default page's PNG is another file in another role: refused, left as it was.
    r = run_report(run, "-o", run / "report-loss.png")
    assert r.code == 2 and r.err.strip().endswith("report-loss.png: already exists; pass --force to replace it"), r.err
    assert (run / "report-loss.png").read_bytes() == first
    page = tmp_path / "r.html"
    assert run_report(run, "-o", page).code == 0
    r = run_report(run, "-o", page)
    assert r.code == 2 and "already exists" in r.err
    assert run_report(run, "-o", page, "--force").code == 0  # an earlier page is no input of the next
