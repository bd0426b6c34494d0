"""The tokenizer interface and the byte-level tokenizer (the default).

Every tokenizer declares `vocab_size` and the special ids `mask_id`, `bos_id`,
`eos_id`, `eot_id` (end of turn) and `pad_id` (their record is `ids.SpecialIds`);
`to_dict()` is stored in every checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np

from dllm_jax.ids import (BYTE_BOS_ID, BYTE_EOS_ID, BYTE_EOT_ID, BYTE_MASK_ID,
                          BYTE_PAD_ID, BYTE_VOCAB_SIZE, SpecialIds)


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
