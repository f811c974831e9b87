"""Property tests (hypothesis) with a fixed, derandomized example budget.

- The tokenizer round-trips any Unicode text (lone surrogates excluded: they
  cannot be encoded as UTF-8, so no text file or argv holds one).
- The checkpoint loader, given any bytes — random, a random safetensors header,
  a valid checkpoint with bytes changed or cut, or one whose config metadata is
  fuzzed — either loads a model or raises UserError with one line; never
  anything else (no IndexError, no MemoryError from a config that lies).
- The data dir's meta.json reader, given any bytes or a fuzzed valid meta.json,
  either returns the parsed meta or raises UserError with one line.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gpt2cli.checkpoint import DTYPE_BYTES, load_checkpoint, save_checkpoint
from gpt2cli.data.meta import DataMeta, read_meta
from gpt2cli.errors import UserError
from gpt2cli.model import GPT
from gpt2cli.model.summary import describe_checkpoint
from gpt2cli.tokenizer import VOCAB_SIZE, get_tokenizer
from tests.conftest import tiny_model


def budget(n: int):
    """A fixed budget: the same examples on every run, no example database, no time limit."""
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- tokenizer ---------------------------------------------------------------------------------
unicode_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)


@budget(300)
@given(unicode_text)
def test_tokenizer_round_trips_any_unicode(text):
    enc = get_tokenizer()
    ids = enc.encode_ordinary(text)  # "<|endoftext|>" in the text is text here
    assert all(0 <= i < VOCAB_SIZE for i in ids)
    assert enc.decode(ids) == text
    assert enc.decode_bytes(ids) == text.encode("utf-8")


@budget(100)
@given(st.lists(unicode_text, min_size=1, max_size=4))
def test_tokenizer_round_trips_documents_joined_by_eot(docs):
    enc = get_tokenizer()
    joined = "<|endoftext|>".join(docs)
    assert enc.decode(enc.encode(joined, allowed_special={"<|endoftext|>"})) == joined


# -- the checkpoint loader ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("properties")


@pytest.fixture(scope="module")
def valid_ckpt(work) -> bytes:
    path = work / "valid.safetensors"
    save_checkpoint(tiny_model(0, n_embd=16, n_head=2, block_size=8, vocab_size=64), path, step=3)
    return path.read_bytes()


def returns_or_refuses(read, kind: type):
    """The property: `read()` gives a `kind`, or raises UserError with a one-line message (then
    None). Anything else fails the test."""
    try:
        value = read()
    except UserError as err:
        message = str(err)
        assert message and "\n" not in message, message
        return None
    assert isinstance(value, kind)
    return value


def loads_or_refuses(path: Path) -> GPT | None:
    def read() -> GPT:
        describe_checkpoint(path)  # `inspect model`: header and config, no weights
        return load_checkpoint(path)

    return returns_or_refuses(read, GPT)


json_leaf = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=10,
)
tensor_names = st.sampled_from(
    ["transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight", "transformer.h.7.x",
     "transformer.ln_f.bias", "weight"]
)
entry = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(sorted(DTYPE_BYTES)) | json_leaf,
        "shape": st.lists(st.integers(-2, 2**40), max_size=3) | json_value,
        "data_offsets": st.lists(st.integers(-4, 2**40) | st.floats(), max_size=3) | json_value,
    }
) | json_value
metadata = st.dictionaries(st.text(max_size=10), st.text(max_size=20) | json_value, max_size=4) | st.fixed_dictionaries(
    {"format": st.just("gpt2cli/1"), "config": st.text(max_size=40) | json_value.map(json.dumps) | json_value}
)
header = st.dictionaries(tensor_names | st.text(max_size=20), entry, max_size=5).flatmap(
    lambda d: st.one_of(st.just(d), metadata.map(lambda m: {**d, "__metadata__": m}))
)


def _with_prefix(header_json: bytes, payload: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header_json)) + header_json + payload


@st.composite
def safetensors_like(draw) -> bytes:
    """A length prefix (usually right), a JSON header, and some payload bytes."""
    raw = json.dumps(draw(header)).encode()
    n = draw(st.one_of(st.just(len(raw)), st.integers(0, 2**64 - 1)))
    return struct.pack("<Q", n) + raw + draw(st.binary(max_size=64))


@budget(150)
@given(st.binary(max_size=300))
def test_loader_on_random_bytes(work, data):
    path = work / "random.safetensors"
    path.write_bytes(data)
    loads_or_refuses(path)


@budget(200)
@given(safetensors_like())
# Files that once got past the loader as OverflowError, TypeError and RecursionError:
@example(_with_prefix(json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, float("inf")]}}).encode()))
@example(_with_prefix(json.dumps({"__metadata__": {"format": "gpt2cli/1", "config": 5}}).encode()))
@example(_with_prefix(b"[" * 100_000 + b"]" * 100_000))
def test_loader_on_random_headers(work, data):
    path = work / "header.safetensors"
    path.write_bytes(data)
    loads_or_refuses(path)


@budget(150)
@given(st.data())
def test_loader_on_damaged_checkpoints(work, valid_ckpt, data):
    """A valid checkpoint with bytes overwritten (mostly in the header) and maybe cut short."""
    raw = bytearray(valid_ckpt)
    header_end = 8 + struct.unpack("<Q", raw[:8])[0]
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, header_end + 64) | st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    path = work / "damaged.safetensors"
    path.write_bytes(bytes(raw))
    loads_or_refuses(path)


@budget(150)
@given(st.data())
def test_loader_on_lying_configs(work, valid_ckpt, data):
    """The tensors of a valid checkpoint, its config metadata fuzzed (n_layer=10**12 and the like)."""
    from safetensors.torch import load, save

    n = struct.unpack("<Q", valid_ckpt[:8])[0]
    meta = json.loads(valid_ckpt[8 : 8 + n])["__metadata__"]
    config = json.loads(meta["config"])
    for key in data.draw(st.lists(st.sampled_from(sorted(config)), min_size=1, max_size=3, unique=True)):
        config[key] = data.draw(st.integers(-1, 10**12) | json_leaf)
    if data.draw(st.booleans()):
        config[data.draw(st.text(max_size=8))] = data.draw(json_value)
    path = work / "lying.safetensors"
    path.write_bytes(save(load(valid_ckpt), metadata={**meta, "config": json.dumps(config)}))
    loads_or_refuses(path)


@pytest.mark.parametrize("key", ["n_layer", "n_embd", "vocab_size", "block_size"])
def test_a_huge_config_is_refused_before_a_model_is_built(work, valid_ckpt, key):
    """A config of 10**12 (layers, width, ...) over small tensors: refused from the header alone."""
    from safetensors.torch import load, save

    n = struct.unpack("<Q", valid_ckpt[:8])[0]
    meta = json.loads(valid_ckpt[8 : 8 + n])["__metadata__"]
    config = {**json.loads(meta["config"]), key: 10**12}
    if key == "n_embd":
        config["n_head"] = 1
    path = work / f"huge-{key}.safetensors"
    path.write_bytes(save(load(valid_ckpt), metadata={**meta, "config": json.dumps(config)}))
    with pytest.raises(UserError, match="do not match its config|config expects"):
        load_checkpoint(path)


def test_the_valid_checkpoint_loads(work, valid_ckpt):
    """The property's other branch is reachable: the undamaged file loads."""
    path = work / "valid-copy.safetensors"
    path.write_bytes(valid_ckpt)
    assert loads_or_refuses(path) is not None


# -- the meta.json reader ----------------------------------------------------------------------
VALID_META = {
    "format": "gpt2cli-data/1",
    "tokenizer": "gpt2",
    "ranks_sha256": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
    "vocab_size": 50257,
    "eot_id": 50256,
    "dtype": "uint16",
    "shard_tokens": 1000,
    "documents": {"train": 3, "val": 1},
    "tokens": {"train": 40, "val": 10},
    "shards": [
        {"file": "train_000000.bin", "split": "train", "tokens": 40, "sha256": "00"},
        {"file": "val_000000.bin", "split": "val", "tokens": 10, "sha256": "11"},
    ],
    "sources": [{"path": "a.txt", "format": "text", "gzip": False, "bytes": 200, "sha256": "22", "documents": 4}],
    "split": {"val_fraction": 0.1, "seed": 0},
}


def reads_or_refuses(data_dir: Path) -> DataMeta | None:
    return returns_or_refuses(lambda: read_meta(data_dir), DataMeta)


def test_the_valid_meta_reads(work):
    d = work / "meta-valid"
    d.mkdir(exist_ok=True)
    (d / "meta.json").write_text(json.dumps(VALID_META), encoding="utf-8")
    assert reads_or_refuses(d) is not None


@budget(200)
@given(st.binary(max_size=300) | json_value.map(lambda v: json.dumps(v).encode()))
def test_meta_reader_on_random_bytes(work, data):
    d = work / "meta-random"
    d.mkdir(exist_ok=True)
    (d / "meta.json").write_bytes(data)
    reads_or_refuses(d)


@budget(200)
@given(st.data())
def test_meta_reader_on_fuzzed_meta(work, data):
    """A valid meta.json with values swapped for arbitrary JSON, at the top or inside a shard/source."""
    meta = json.loads(json.dumps(VALID_META))
    places = [meta, meta["shards"][0], meta["sources"][0], meta["split"]]
    for _ in range(data.draw(st.integers(1, 3))):
        target = data.draw(st.sampled_from(places))
        key = data.draw(st.sampled_from(sorted(target)) | st.text(max_size=8))
        target[key] = data.draw(json_value)
    d = work / "meta-fuzzed"
    d.mkdir(exist_ok=True)
    (d / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    reads_or_refuses(d)


def test_meta_reader_on_deep_nesting(work):
    """json.loads raises RecursionError on deep nesting; the reader must still answer cleanly."""
    d = work / "meta-deep"
    d.mkdir(exist_ok=True)
    (d / "meta.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    assert reads_or_refuses(d) is None
