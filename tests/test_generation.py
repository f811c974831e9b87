"""The decoding iterator against independent references.

- a naive loop that recomputes the full forward (cropped to block_size) for every token;
- transformers' greedy `generate` on the same (converted) weights;
- decoding each prompt alone;
- one-shot UTF-8 decoding for the streamed text.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from gpt2cli.config import ModelConfig
from gpt2cli.convert import from_hf
from gpt2cli.errors import UserError
from gpt2cli.generation import (
    SamplingConfig,
    TextStream,
    complete,
    generate,
    prepare_for_decoding,
    sample_uniforms,
)
from gpt2cli.model import GPT
from gpt2cli.sampling import Sampler
from gpt2cli.tokenizer import EOT_ID, get_tokenizer
from tests.conftest import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def chain_model(next_token: dict[int, int], vocab_size: int = 50257, block_size: int = 64, scale: float = 10.0) -> GPT:
    """A 1-layer GPT whose next token is next_token[last token], whatever came before.

    Hand-set weights: each token in the chain owns one embedding dimension
    (one-hot, times `scale`); attention and position embeddings are zero; the
    MLP has one unit per key token that fires on it and writes the successor's
    direction. The tied head then scores the successor ~8 * scale above
    anything else, so even sampling at temperature 1 follows the chain.
    """
    tokens = sorted(set(next_token) | set(next_token.values()))
    n_embd = 64
    assert len(tokens) <= n_embd
    dim = {t: i for i, t in enumerate(tokens)}
    cfg = ModelConfig(n_layer=1, n_head=1, n_embd=n_embd, block_size=block_size, vocab_size=vocab_size)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        wte = model.transformer.wte.weight
        for t, d in dim.items():
            wte[t, d] = scale
        block = model.transformer.h[0]
        for ln in (block.ln_1, block.ln_2, model.transformer.ln_f):
            ln.weight.fill_(1.0)
        fc, proj = block.mlp.c_fc, block.mlp.c_proj
        for unit, (a, b) in enumerate(sorted(next_token.items())):
            fc.weight[unit, dim[a]] = 1.0  # layer-normed one-hot: ~8 on its own dimension
            fc.bias[unit] = -4.0  # fires only for token a
            proj.weight[dim[b], unit] = 5.0 * scale  # ~20 * scale toward the successor
    return model


def naive_decode(model: GPT, prompt: list[int], cfg: SamplingConfig, index: int = 0):
    """Reference: the full forward of the (cropped) text for every token, no cache."""
    block, V = model.config.block_size, model.config.vocab_size
    sampler = Sampler(V, cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty)
    u = sample_uniforms(cfg.seed, index, cfg.max_new_tokens) if cfg.temperature > 0 else None
    seq = list(prompt)
    tokens, logprobs = [], []
    with torch.no_grad():
        for t in range(cfg.max_new_tokens):
            present = torch.zeros(1, V, dtype=torch.bool)
            present[0, seq] = True
            logits = model(torch.tensor([seq[-block:]]))[:, -1]
            tok, lp, _ = sampler(logits, present, None if u is None else u[t : t + 1])
            seq.append(tok.item())
            tokens.append(tok.item())
            logprobs.append(lp.item())
            if tokens[-1] == EOT_ID:
                break
    return tokens, logprobs


SETTINGS = [
    dict(temperature=0.0),
    dict(temperature=1.0, seed=3),
    dict(temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.3, seed=4),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=["greedy", "sampled", "all_controls"])
def test_cached_decoding_equals_full_recompute_past_block_size(settings):
    model = tiny_model(0, block_size=32, vocab_size=128)
    with torch.no_grad():  # larger weights than GPT-2's init: sharper, more varied distributions
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    cfg = SamplingConfig(max_new_tokens=300, **settings)
    prompt = [5, 17, 99, 3, 42]
    (got,) = complete(model, [prompt], cfg)
    tokens, logprobs = naive_decode(model, prompt, cfg)
    assert len(got.tokens) == 300 > model.config.block_size  # the window slid many times
    assert got.tokens == tokens
    assert len(set(tokens)) > 10  # not stuck on one token: the comparison means something
    assert max(abs(a - b) for a, b in zip(got.logprobs, logprobs, strict=True)) < 1e-4


def hf_random_model(seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=2, n_head=4, n_embd=64, n_positions=80, vocab_size=300,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=None, eos_token_id=None,  # no EOS: transformers cannot stop early
    )  # fmt: skip
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # randomise biases and LayerNorms too; wider weights decode less repetitively
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def test_greedy_equals_transformers_generate_after_convert(tmp_path):
    hf = hf_random_model(2)
    hf.save_pretrained(tmp_path / "hf")
    ours = from_hf(tmp_path / "hf", tmp_path / "ours.safetensors").eval()
    prompts = [[11, 250, 7, 42, 3, 99, 180], [64, 2]]  # two lengths, decoded in one call
    cfg = SamplingConfig(max_new_tokens=50, temperature=0.0)
    got = complete(ours, prompts, cfg)
    for prompt, completion in zip(prompts, got, strict=True):
        ids = torch.tensor([prompt])
        out = hf.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=50,
            pad_token_id=0,
        )
        expected = out[0, len(prompt) :].tolist()
        assert len(expected) == 50
        assert len(set(expected)) > 20  # a varied continuation, not one token repeated
        assert completion.tokens == expected
        assert completion.stop_reason == "length"


@pytest.mark.parametrize("settings", SETTINGS[:2], ids=["greedy", "sampled"])
def test_batch_of_mixed_lengths_equals_each_prompt_alone(settings):
    model = tiny_model(1, block_size=24, vocab_size=128)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8], [9], list(range(30, 60))]  # the last exceeds the context
    cfg = SamplingConfig(max_new_tokens=40, **settings)
    batch = complete(model, prompts, cfg)
    for i, (prompt, got) in enumerate(zip(prompts, batch, strict=True)):
        # Sample i's randomness is stream (seed, i): the naive reference draws from the same one.
        tokens, _ = naive_decode(model, prompt, cfg, index=i)
        assert got.tokens == tokens, f"prompt {i}"
        assert got.prompt == prompt
    if cfg.temperature == 0:
        alone = [complete(model, [p], cfg)[0].tokens for p in prompts]
        assert [c.tokens for c in batch] == alone


def test_samples_of_one_prompt_differ_and_repeat_with_the_seed():
    model = tiny_model(2, vocab_size=128)
    cfg = SamplingConfig(max_new_tokens=20, seed=11)
    first = complete(model, [[1, 2]] * 3, cfg)
    again = complete(model, [[1, 2]] * 3, cfg)
    assert [c.tokens for c in first] == [c.tokens for c in again]
    assert len({tuple(c.tokens) for c in first}) == 3
    other = complete(model, [[1, 2]] * 3, SamplingConfig(max_new_tokens=20, seed=12))
    assert [c.tokens for c in other] != [c.tokens for c in first]


def test_steps_report_finished_samples_and_stop_at_eot():
    # Chains: 10 -> 11 -> EOT and 11 -> EOT; both prompts have length 1 (one batch).
    model = chain_model({10: 11, 11: EOT_ID, EOT_ID: EOT_ID})
    steps = list(generate(model, [[10], [11]], SamplingConfig(max_new_tokens=5, seed=0)))
    assert len(steps) == 2  # everything finished: no more steps
    assert steps[0].tokens == [11, EOT_ID]
    assert steps[0].finished == [False, True] and steps[0].stop_reason == [None, "eot"]
    assert steps[1].tokens == [EOT_ID, -1]
    assert math.isnan(steps[1].logprobs[1]) and math.isnan(steps[1].entropies[1])
    assert steps[1].finished == [True, True]
    # The chain's margin makes every draw nearly certain: logprob ~ 0, entropy ~ 0.
    assert steps[0].logprobs[0] == pytest.approx(0.0, abs=1e-3)
    assert steps[0].entropies[0] == pytest.approx(0.0, abs=1e-2)
    done = complete(model, [[10], [11]], SamplingConfig(max_new_tokens=5, seed=0))
    assert [c.tokens for c in done] == [[11, EOT_ID], [EOT_ID]]
    assert [c.stop_reason for c in done] == ["eot", "eot"]


def byte_token(b: bytes) -> int:
    return get_tokenizer().encode_single_token(b)


def test_stop_string_cuts_text_and_ends_the_sample():
    red, fox, ran = get_tokenizer().encode(" red fox ran")  # one token each
    model = chain_model({red: fox, fox: ran, ran: red})
    free = complete(model, [[red]], SamplingConfig(max_new_tokens=7, temperature=0))[0]
    assert free.text == " fox ran red fox ran red fox" and free.stop_reason == "length"
    cfg = SamplingConfig(max_new_tokens=7, temperature=0, stop=["zzz", "n red f"])
    got = complete(model, [[red]], cfg)[0]
    assert got.text == " fox ra"  # cut before the stop string
    assert got.stop_reason == "stop"
    assert got.tokens == free.tokens[:4]  # ... which " fox" (the 4th token) completed


def test_text_streams_whole_characters_only():
    # " €é\n" as single bytes: no token but the space and newline is valid UTF-8 alone.
    cycle = [byte_token(b) for b in (b" ", b"\xe2", b"\x82", b"\xac", b"\xc3", b"\xa9", b"\n")]
    model = chain_model({a: b for a, b in zip(cycle, cycle[1:] + cycle[:1], strict=True)})
    pieces = []
    for step in generate(model, [[cycle[0]]], SamplingConfig(max_new_tokens=20, temperature=0)):
        pieces.append(step.text[0])
    assert "".join(pieces) == (b"\xe2\x82\xac\xc3\xa9\n " * 3)[:20].decode() == "\u20ac\u00e9\n \u20ac\u00e9\n \u20ac\u00e9\n"
    assert all("\ufffd" not in p for p in pieces)
    assert pieces[:6] == ["", "", "\u20ac", "", "\u00e9", "\n"]


def fake_bytes(table: dict[int, bytes]):
    return lambda t: table[t]


def test_text_stream_matches_one_shot_decode_including_invalid_bytes():
    text = "héllo wörld €100 — ☃ done".encode()
    data = text[:8] + b"\xff\xfe" + text[8:] + b"\xe2\x82"  # invalid bytes, and a cut-off tail
    torch.manual_seed(0)
    cuts = sorted(set(torch.randint(1, len(data), (12,)).tolist()))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    stream = TextStream(fake_bytes(dict(enumerate(chunks))), [])
    pieces = [stream.push(i)[0] for i in range(len(chunks))] + [stream.finish()]
    assert "".join(pieces) == data.decode("utf-8", errors="replace")
    # Only the genuinely invalid bytes became U+FFFD: 2 in the middle, 1 for the cut-off tail.
    assert "".join(pieces).count("\ufffd") == 3


def test_text_stream_holds_back_a_possible_stop_string():
    table = {0: b"one\n", 1: b"\n", 2: b"two", 3: b"\n\n", 4: b"x"}
    stream = TextStream(fake_bytes(table), ["\n\nEND"])
    assert stream.push(0) == ("one", False)  # "\n" might start "\n\nEND"
    assert stream.push(2) == ("\ntwo", False)  # it did not
    assert stream.push(3) == ("", False)
    assert stream.finish() == "\n\n"
    stream = TextStream(fake_bytes({**table, 5: b"EN", 6: b"D and more"}), ["\n\nEND"])
    assert stream.push(0) == ("one", False)
    assert stream.push(1) == ("", False)
    assert stream.push(5) == ("", False)
    assert stream.push(6) == ("", True)


def test_generate_leaves_grad_mode_and_training_mode_alone():
    model = tiny_model(3, vocab_size=128).train()
    seen = []
    for step in generate(model, [[1, 2]], SamplingConfig(max_new_tokens=3, seed=0)):
        seen.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled(), model.training))
        assert step.tokens[0] >= 0
    assert seen == [(False, True, False)] * 3  # eval while decoding, nothing leaks between steps
    assert model.training


def test_bf16_weights_decode():
    model = tiny_model(4, vocab_size=128).to(torch.bfloat16)
    (got,) = complete(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=40, seed=0, top_k=10))
    assert len(got.tokens) == 40 and all(0 <= t < 128 for t in got.tokens)
    assert all(math.isfinite(x) for x in got.logprobs + got.entropies)


def test_long_generation_uses_the_transposed_head_and_agrees():
    # 64+ steps on the CPU in fp32 switch to the (C, V) head copy; greedy tokens must not change.
    model = tiny_model(5, block_size=128, vocab_size=256)
    cfg = SamplingConfig(max_new_tokens=70, temperature=0.0)
    (got,) = complete(model, [[7, 8]], cfg)
    assert got.tokens == naive_decode(model, [7, 8], cfg)[0]


def test_prepared_model_keeps_its_values_and_decodes_the_same():
    model = tiny_model(6, block_size=128, vocab_size=256)
    cfg = SamplingConfig(max_new_tokens=40, top_k=20, seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = naive_decode(model, [3, 4, 5], cfg)[0]
    prepare_for_decoding(model)
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied
    assert model.lm_head.weight.t().is_contiguous()  # column-major now
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert complete(model, [[3, 4, 5]], cfg)[0].tokens == expected


@pytest.mark.parametrize(
    "settings, flag",
    [
        (dict(max_new_tokens=0), "--max-new-tokens"),
        (dict(top_p=1.01), "--top-p"),
        (dict(top_k=-3), "--top-k"),
        (dict(temperature=-1), "--temperature"),
        (dict(repetition_penalty=-1), "--repetition-penalty"),
        (dict(stop=[""]), "--stop"),
        (dict(top_k="many"), "top_k"),
    ],
)
def test_sampling_config_refuses_bad_values(settings, flag):
    with pytest.raises(UserError, match=flag):
        SamplingConfig(**settings)


def test_prompts_are_checked():
    model = tiny_model(0, vocab_size=128)
    cfg = SamplingConfig(max_new_tokens=2)
    with pytest.raises(UserError, match="token 500 is outside"):
        complete(model, [[1, 500]], cfg)
    with pytest.raises(UserError, match="no <|endoftext|>"):
        complete(model, [[]], cfg)
    with pytest.raises(UserError, match="no prompts"):
        complete(model, [], cfg)
    # With the GPT-2 vocabulary, an empty prompt starts from <|endoftext|>.
    chain = chain_model({EOT_ID: 10, 10: 11})
    (got,) = complete(chain, [[]], SamplingConfig(max_new_tokens=2, temperature=0))
    assert got.prompt == [EOT_ID] and got.tokens == [10, 11]
