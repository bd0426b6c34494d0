"""The special token ids, below everything that reads them.

`SpecialIds` is the record a tokenizer owns (`tokenizer.special_ids`) and a model
config carries (`config.ids`); the byte-level tokenizer's ids are here too, as the
byte presets use them. Models, objectives, data and tokenizers all read this
module; it imports nothing of the library.
"""

from __future__ import annotations

import dataclasses

SPECIAL_ROLES = ('mask', 'bos', 'eos', 'eot', 'pad')


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
