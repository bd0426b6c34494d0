"""SentencePiece tokenizers: loading a model, and training one on a local corpus.

A diffusion LM needs a mask token; `train` adds `<mask>` and `<eot>` as
user-defined pieces and fixes pad/BOS/EOS ids, with byte fallback so that any
text round-trips. Models trained elsewhere work if they have those pieces (or
name theirs with `special_tokens`).
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np

from dllm_jax.ids import SpecialIds

DEFAULT_SPECIAL_TOKENS = {'mask': '<mask>', 'bos': '<s>', 'eos': '</s>',
                          'eot': '<eot>', 'pad': '<pad>'}


class SentencePieceTokenizer:
  """A `.model` file behind the tokenizer interface of `tokenizers/base.py`."""

  name = 'sentencepiece'

  def __init__(self, path: str, special_tokens: dict[str, str] | None = None):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    self.path = os.path.abspath(path)
    if not os.path.isfile(self.path):
      raise FileNotFoundError(f'no SentencePiece model at {path!r}; train one with '
                              'python -m launch.train_tokenizer.')
    try:
      self._sp = spm.SentencePieceProcessor(model_file=self.path)
    except (RuntimeError, OSError) as e:
      detail = (str(e).strip().splitlines() or [''])[0][:200]
      raise ValueError(f'{self.path} is not a valid SentencePiece model '
                       f'({detail}).') from None
    self.special_tokens = {**DEFAULT_SPECIAL_TOKENS, **(special_tokens or {})}
    unk = self._sp.unk_id()
    for role, piece in self.special_tokens.items():
      token_id = self._sp.piece_to_id(piece)
      if token_id == unk and piece != self._sp.id_to_piece(unk):
        raise ValueError(
            f'SentencePiece model {path!r} has no {role} token {piece!r}; a diffusion '
            f'LM needs one. Train with python -m launch.train_tokenizer (adds <mask> '
            f'and <eot>) or pass special_tokens={{{role!r}: "..."}}.')
      setattr(self, f'{role}_id', int(token_id))
    self.vocab_size = int(self._sp.get_piece_size())
    self._specials = {getattr(self, f'{r}_id') for r in self.special_tokens}

  def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
    try:
      ids = self._sp.encode(text)
    except RuntimeError:
      text.encode('utf-8')  # Not valid Unicode (a lone surrogate): UnicodeEncodeError.
      raise
    ids = ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])
    return np.asarray(ids, np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray, *, stop_at_eos: bool = True) -> str:
    out = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if stop_at_eos and i in (self.eos_id, self.eot_id):
        break
      if i not in self._specials and 0 <= i < self.vocab_size:
        out.append(i)
    return self._sp.decode(out)

  @property
  def special_ids(self) -> SpecialIds:
    return SpecialIds.of(self)

  def to_dict(self) -> dict:
    return {'name': self.name, 'path': self.path, 'special_tokens': self.special_tokens,
            'vocab_size': self.vocab_size,
            **{f'{r}_id': getattr(self, f'{r}_id') for r in self.special_tokens}}


def train(texts: Iterable[str], model_prefix: str, *, vocab_size: int = 1024,
          model_type: str = 'bpe', max_sentences: int = 200_000, **options) -> str:
  """Trains a SentencePiece model on `texts` (documents; split into lines).

  Ids: 0 unk, 1 `<s>`, 2 `</s>`, 3 `<pad>`, then `<mask>`, `<eot>`. `options`
  go to the SentencePiece trainer (e.g. hard_vocab_limit=False). Returns the
  path of the `.model` file.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  def lines():
    n = 0
    for text in texts:
      for line in text.splitlines():
        if line.strip():
          yield line
          n += 1
          if n >= max_sentences:
            return

  os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
  try:
    _train(spm, lines(), model_prefix, vocab_size, model_type, options)
  except RuntimeError as e:  # SentencePiece's trainer: 'INTERNAL: ... [check]'.
    detail = ' '.join(str(e).split())[:300]
    if 'sentences_.empty()' in detail:
      detail = 'the corpus has no text'
    raise ValueError(f'cannot train a SentencePiece model {model_prefix}.model with '
                     f'vocab_size={vocab_size}: {detail}') from None
  return model_prefix + '.model'


def _train(spm, sentences, model_prefix: str, vocab_size: int, model_type: str,
           options: dict) -> None:
  spm.SentencePieceTrainer.train(
      sentence_iterator=sentences, model_prefix=model_prefix, vocab_size=vocab_size,
      model_type=model_type, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
      user_defined_symbols=[DEFAULT_SPECIAL_TOKENS['mask'], DEFAULT_SPECIAL_TOKENS['eot']],
      byte_fallback=True, character_coverage=1.0, split_digits=True,
      remove_extra_whitespaces=False, normalization_rule_name='identity',
      add_dummy_prefix=False,  # Concatenated encodings equal the whole's.
      minloglevel=2, **options)
