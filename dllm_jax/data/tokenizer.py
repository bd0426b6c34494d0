"""Tokenizers. The byte-level tokenizer is the default and needs no files.

Every tokenizer declares `vocab_size` and the special ids `mask_id`, `bos_id`,
`eos_id`, `eot_id` (end of turn) and `pad_id`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

# Byte tokenizer ids: 0..255 are the bytes themselves, then the specials.
BYTE_PAD_ID = 256
BYTE_BOS_ID = 257
BYTE_EOS_ID = 258
BYTE_EOT_ID = 259
BYTE_MASK_ID = 260
BYTE_VOCAB_SIZE = 261


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


def from_dict(d: dict):
  """Rebuilds a tokenizer from `to_dict()` (stored in checkpoints as JSON)."""
  if d.get('name') == 'byte':
    return ByteTokenizer(**d)
  if d.get('name') == 'hf':
    from dllm_jax.data.hf_tokenizer import HFTokenizer  # pylint: disable=g-import-not-at-top
    tok = HFTokenizer(d['path'], d.get('special_tokens'))
    if tok.vocab_size != d.get('vocab_size', tok.vocab_size):
      raise ValueError(f'tokenizer at {d["path"]} has {tok.vocab_size} tokens; the '
                       f'checkpoint was written with {d["vocab_size"]}.')
    return tok
  raise ValueError(f'unknown tokenizer {d.get("name")!r}; known: byte, hf.')
