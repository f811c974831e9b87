"""Corpora in, token shards out, batches back.

- stories: the built-in story corpus (a seeded generator).
- sources: input files -> pieces of bytes cut at document boundaries.
- encode: a piece -> its documents' tokens (runs in worker processes).
- split: which documents go to val.
- writer: uint16 shards written atomically.
- shards: the `gpt2 tokenize` pipeline tying these together.
- meta: DATA_DIR/meta.json.
- reader: random training windows, documents and whole splits for train/eval.
"""
