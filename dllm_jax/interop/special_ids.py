"""Special token ids from a Hugging Face config.json, and their checks.

A directory without tokenizer files still names its ids in config.json
(`mask_token_id`, `bos_token_id`, `eos_token_id` (an id or a list: the first is
EOS), `pad_token_id`; this project's exports add `eot_token_id`). Roles the file
does not name fall back to the family's documented ids when the vocabulary has
room for them (LLaDA's 126336 mask, LLaDA2 / LLaDA-MoE's 156895), else a
one-line error; so do ids that clash (the mask id doubling as EOS, pad or BOS)
and ids config.json and the tokenizer files disagree on.

  ids = ids_from_config(hf_config, defaults=RELEASED_IDS, where='DIR/config.json')
  check_agrees(hf_config, tokenizer.special_ids, where='DIR')
"""

from __future__ import annotations

from typing import Any

from dllm_jax.ids import SPECIAL_ROLES, SpecialIds

KEYS = {role: f'{role}_token_id' for role in SPECIAL_ROLES}


def _first(value: Any) -> int | None:
  if isinstance(value, (list, tuple)):
    return int(value[0]) if value else None
  return None if value is None else int(value)


def named_ids(hf_config: dict) -> dict[str, int]:
  """The roles config.json names: {'mask': id, 'eos': id, ...}."""
  out = {r: _first(hf_config.get(k)) for r, k in KEYS.items()}
  return {r: i for r, i in out.items() if i is not None}


def check_distinct(ids: SpecialIds, where: str) -> None:
  """The mask id may not double as another role (the sampler would stop at, or
  keep predicting, it)."""
  for role in ('bos', 'eos', 'eot', 'pad'):
    if getattr(ids, role) == ids.mask:
      raise ValueError(f'{where}: {role} id {ids.mask} is also the mask id; a '
                       'diffusion LM needs a mask token of its own.')


def ids_from_config(hf_config: dict, *, vocab_size: int,
                    defaults: SpecialIds | None, where: str) -> SpecialIds:
  """The special ids of a config.json (module doc). `defaults`: the family's
  documented ids, used for unnamed roles when they fit the vocabulary."""
  named = named_ids(hf_config)
  if defaults is not None and max(getattr(defaults, r) for r in SPECIAL_ROLES) >= vocab_size:
    defaults = None  # Not that vocabulary.
  if 'eos' in named:
    named.setdefault('pad', named['eos'])
    named.setdefault('eot', named['eos'])
  missing = [r for r in SPECIAL_ROLES if r not in named]
  if missing and defaults is None:
    raise ValueError(f'{where} names no {KEYS[missing[0]]} and the directory has no '
                     'tokenizer files: cannot tell the special ids (add the key, or '
                     'the tokenizer files).')
  ids = SpecialIds(**{r: named.get(r, getattr(defaults, r, None)) for r in SPECIAL_ROLES})
  ids.check_vocab(vocab_size)
  check_distinct(ids, where)
  return ids


def check_agrees(hf_config: dict, ids: SpecialIds, where: str) -> None:
  """config.json's named ids must be the tokenizer's (a list of EOS ids must
  contain the tokenizer's EOS)."""
  for role, key in KEYS.items():
    value = hf_config.get(key)
    if value is None:
      continue
    want = getattr(ids, role)
    values = [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]
    if want not in values:
      raise ValueError(f'{where}: config.json {key}={value} but the tokenizer files '
                       f'give {role} id {want}; fix one of them.')
  check_distinct(ids, where)


def config_keys(ids: SpecialIds) -> dict[str, int]:
  """The config.json keys of a set of ids (exports)."""
  return {KEYS[r]: int(getattr(ids, r)) for r in SPECIAL_ROLES}
