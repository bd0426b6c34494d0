"""Tokenizers by name: the `data.tokenizer` config string, and the record a
checkpoint stores (`to_dict()`), back to a tokenizer. Kinds:

  byte                  UTF-8 bytes + specials (no files)
  sentencepiece:MODEL   a SentencePiece model (train one: `python -m launch.train_tokenizer`)
  hf:DIR                a Hugging Face tokenizer.json directory (LLaDA's)
"""

from __future__ import annotations

from dllm_jax.ids import SPECIAL_ROLES
from dllm_jax.tokenizers.base import ByteTokenizer, Tokenizer
from dllm_jax.tokenizers.hf import HFTokenizer
from dllm_jax.tokenizers.sp import SentencePieceTokenizer

KINDS = ('byte', 'sentencepiece', 'hf')


def check_spec(spec: str) -> tuple[str, str]:
  """(kind, path) of a `data.tokenizer` string; ValueError if it is malformed."""
  kind, _, path = spec.partition(':')
  if (kind == 'byte') != (not path) or kind not in KINDS:
    raise ValueError(f'unknown tokenizer {spec!r}; use byte, sentencepiece:MODEL_FILE '
                     'or hf:DIR.')
  return kind, path


def make_tokenizer(spec: str) -> Tokenizer:
  """`byte`, `sentencepiece:MODEL_FILE` or `hf:DIR` -> a tokenizer."""
  kind, path = check_spec(spec)
  if kind == 'byte':
    return ByteTokenizer()
  if kind == 'sentencepiece':
    return SentencePieceTokenizer(path)
  return HFTokenizer(path)


def vocab_differences(saved: dict, current: dict) -> str:
  """'vocab_size 512 -> 1024, ...' for every differing vocabulary size / special
  id between two `to_dict()` records ('' when they agree)."""
  keys = ('name', 'vocab_size') + tuple(f'{r}_id' for r in SPECIAL_ROLES)
  return ', '.join(f'{k} {saved[k]!r} -> {current.get(k)!r}' for k in keys
                   if k in saved and saved[k] != current.get(k))


def check_matches(saved: dict, tok: Tokenizer) -> None:
  """Raises ValueError if `tok` differs from a checkpoint's tokenizer record in
  vocabulary size or special ids (the embedding rows would mean other tokens)."""
  diffs = vocab_differences(saved, tok.to_dict())
  if diffs:
    raise ValueError(f'the {tok.name} tokenizer does not match the checkpoint\'s '
                     f'({diffs}); use the tokenizer the checkpoint was trained with.')


def from_dict(d: dict) -> Tokenizer:
  """Rebuilds a tokenizer from `to_dict()` (stored in checkpoints as JSON) and
  checks its vocabulary against the record."""
  name = d.get('name')
  if name == 'byte':
    tok = ByteTokenizer()
  elif name == 'hf':
    tok = HFTokenizer(d['path'], d.get('special_tokens'))
  elif name == 'sentencepiece':
    tok = SentencePieceTokenizer(d['path'], d.get('special_tokens'))
  else:
    raise ValueError(f'unknown tokenizer {name!r}; known: {KINDS}.')
  check_matches(d, tok)
  return tok
