"""Tokenizers behind one interface. The byte-level tokenizer is the default.

Every tokenizer declares `vocab_size` and the special ids `mask_id`, `bos_id`,
`eos_id`, `eot_id` (end of turn) and `pad_id`; `to_dict()` is stored in every
checkpoint and `from_dict` rebuilds it, checking that the vocabulary still
matches. Kinds (the `data.tokenizer` config string):

  byte                  UTF-8 bytes + specials (no files)
  sentencepiece:MODEL   a SentencePiece model (train one: `python -m launch.train_tokenizer`)
  hf:DIR                a Hugging Face tokenizer.json directory (LLaDA's)
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np

SPECIAL_ROLES = ('mask', 'bos', 'eos', 'eot', 'pad')
KINDS = ('byte', 'sentencepiece', 'hf')


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """The special token ids a diffusion LM needs, as one record: the tokenizer
  owns it (`tokenizer.special_ids`), model configs carry it (`config.ids`), and
  the trainer, sampler and losses read it from there."""

  mask: int
  bos: int
  eos: int
  eot: int  # End of turn (chat).
  pad: int

  @classmethod
  def of(cls, tokenizer) -> 'SpecialIds':
    """The record of anything with `mask_id`, `bos_id`, ... attributes."""
    return cls(**{r: int(getattr(tokenizer, f'{r}_id')) for r in SPECIAL_ROLES})

  def check_vocab(self, vocab_size: int) -> None:
    for role in SPECIAL_ROLES:
      if not 0 <= getattr(self, role) < vocab_size:
        raise ValueError(f'{role}_id={getattr(self, role)} is outside the '
                         f'vocabulary [0, {vocab_size}).')


class Tokenizer(Protocol):
  """What the data pipeline, trainer and sampler need from a tokenizer."""

  name: str
  vocab_size: int
  mask_id: int
  bos_id: int
  eos_id: int
  eot_id: int
  pad_id: int

  def encode(self, text: str, *, add_bos: bool = False,
             add_eos: bool = False) -> np.ndarray: ...

  def decode(self, ids: Sequence[int] | np.ndarray, *,
             stop_at_eos: bool = True) -> str: ...

  def to_dict(self) -> dict: ...

  @property
  def special_ids(self) -> SpecialIds: ...


class WithSpecialIds:
  """`mask_id`, `bos_id`, ... read from a dataclass's `ids` record (model
  configs: the older per-id names, kept for callers)."""

  mask_id = property(lambda self: self.ids.mask)
  bos_id = property(lambda self: self.ids.bos)
  eos_id = property(lambda self: self.ids.eos)
  eot_id = property(lambda self: self.ids.eot)
  pad_id = property(lambda self: self.ids.pad)


# Byte tokenizer ids: 0..255 are the bytes themselves, then the specials.
BYTE_PAD_ID = 256
BYTE_BOS_ID = 257
BYTE_EOS_ID = 258
BYTE_EOT_ID = 259
BYTE_MASK_ID = 260
BYTE_VOCAB_SIZE = 261
BYTE_IDS = SpecialIds(mask=BYTE_MASK_ID, bos=BYTE_BOS_ID, eos=BYTE_EOS_ID,
                      eot=BYTE_EOT_ID, pad=BYTE_PAD_ID)


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
  """UTF-8 bytes as tokens, with pad/BOS/EOS/end-of-turn/mask specials."""

  name: str = 'byte'
  vocab_size: int = BYTE_VOCAB_SIZE
  pad_id: int = BYTE_PAD_ID
  bos_id: int = BYTE_BOS_ID
  eos_id: int = BYTE_EOS_ID
  eot_id: int = BYTE_EOT_ID
  mask_id: int = BYTE_MASK_ID

  def encode(self, text: str | bytes, *, add_bos: bool = False,
             add_eos: bool = False) -> np.ndarray:
    """Text -> int32 ids `[N]`."""
    data = text.encode('utf-8') if isinstance(text, str) else bytes(text)
    ids = np.frombuffer(data, dtype=np.uint8).astype(np.int32)
    parts = ([np.array([self.bos_id], np.int32)] if add_bos else []) + [ids]
    if add_eos:
      parts.append(np.array([self.eos_id], np.int32))
    return np.concatenate(parts)

  def decode(self, ids: Sequence[int] | np.ndarray, *,
             stop_at_eos: bool = True) -> str:
    """Ids -> text. Special and out-of-range ids are dropped; decoding stops at
    the first EOS or end-of-turn when `stop_at_eos`."""
    out = bytearray()
    for i in np.asarray(ids).reshape(-1).tolist():
      if stop_at_eos and i in (self.eos_id, self.eot_id):
        break
      if 0 <= i < 256:
        out.append(i)
    return out.decode('utf-8', errors='replace')

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @property
  def special_ids(self) -> SpecialIds:
    return SpecialIds.of(self)


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
    from dllm_jax.data.sp_tokenizer import SentencePieceTokenizer  # pylint: disable=g-import-not-at-top
    return SentencePieceTokenizer(path)
  from dllm_jax.data.hf_tokenizer import HFTokenizer  # pylint: disable=g-import-not-at-top
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
    from dllm_jax.data.hf_tokenizer import HFTokenizer  # pylint: disable=g-import-not-at-top
    tok = HFTokenizer(d['path'], d.get('special_tokens'))
  elif name == 'sentencepiece':
    from dllm_jax.data.sp_tokenizer import SentencePieceTokenizer  # pylint: disable=g-import-not-at-top
    tok = SentencePieceTokenizer(d['path'], d.get('special_tokens'))
  else:
    raise ValueError(f'unknown tokenizer {name!r}; known: {KINDS}.')
  check_matches(d, tok)
  return tok
