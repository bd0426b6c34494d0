"""A Hugging Face `tokenizer.json` from a local directory (the LLaDA tokenizer case).

Reads `tokenizer.json` with the `tokenizers` library (a data file, no code) and,
when present, the `chat_template` of `tokenizer_config.json`, rendered in Jinja's
immutable sandbox. Special ids are looked up by token text (LLaDA's by default).
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from dllm_jax.ids import SpecialIds

# LLaDA's special tokens (ids 126336, 126080, 126081, 126348 in its vocabulary).
LLADA_SPECIAL_TOKENS = {
    'mask': '<|mdm_mask|>',
    'bos': '<|startoftext|>',
    'eos': '<|endoftext|>',
    'eot': '<|eot_id|>',
    'pad': '<|endoftext|>',  # LLaDA pads SFT answers with EOS.
}


class HFTokenizer:
  """`tokenizer.json` behind the same interface as the byte tokenizer."""

  name = 'hf'

  def __init__(self, path: str, special_tokens: dict[str, str] | None = None):
    from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
    self.path = os.path.abspath(path)
    file = os.path.join(self.path, 'tokenizer.json')
    if not os.path.isfile(file):
      raise FileNotFoundError(f'no tokenizer.json in {path!r}.')
    try:
      self._tok = Tokenizer.from_file(file)
    except Exception as e:  # pylint: disable=broad-except  (tokenizers raises Exception)
      detail = (str(e).strip().splitlines() or [''])[0][:200]
      raise ValueError(f'{file} is not a valid tokenizer.json ({detail}).') from None
    self.special_tokens = {**LLADA_SPECIAL_TOKENS, **(special_tokens or {})}
    for role, text in self.special_tokens.items():
      token_id = self._tok.token_to_id(text)
      if token_id is None:
        raise ValueError(f'{file}: no {role} token {text!r}; a diffusion LM needs '
                         f'one. Pass special_tokens={{{role!r}: "..."}} naming the '
                         'token this tokenizer uses (or add it to the tokenizer).')
      setattr(self, f'{role}_id', token_id)
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    self.chat_template = None
    config_file = os.path.join(self.path, 'tokenizer_config.json')
    if os.path.isfile(config_file):
      with open(config_file) as f:
        self.chat_template = json.load(f).get('chat_template')

  def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
    try:
      ids = self._tok.encode(text, add_special_tokens=False).ids
    except TypeError:
      text.encode('utf-8')  # Not valid Unicode (a lone surrogate): UnicodeEncodeError.
      raise
    ids = ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])
    return np.asarray(ids, np.int32)

  def decode(self, ids: Sequence[int] | np.ndarray, *, stop_at_eos: bool = True) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if stop_at_eos:
      for i, t in enumerate(ids):
        if t in (self.eos_id, self.eot_id):
          ids = ids[:i]
          break
    return self._tok.decode(ids, skip_special_tokens=True)

  def apply_chat_template(self, messages: list[dict[str, str]], *,
                          add_generation_prompt: bool = True) -> str:
    """Renders `messages` ([{'role', 'content'}]) with the tokenizer's template."""
    if not self.chat_template:
      raise ValueError(f'{self.path}: tokenizer_config.json has no chat_template.')
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # pylint: disable=g-import-not-at-top
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(self.chat_template).render(
        messages=messages, add_generation_prompt=add_generation_prompt,
        bos_token=self.special_tokens['bos'], eos_token=self.special_tokens['eos'])

  @property
  def special_ids(self) -> SpecialIds:
    return SpecialIds.of(self)

  def to_dict(self) -> dict:
    return {'name': self.name, 'path': self.path, 'special_tokens': self.special_tokens,
            'vocab_size': self.vocab_size,
            **{f'{r}_id': getattr(self, f'{r}_id') for r in self.special_tokens}}
