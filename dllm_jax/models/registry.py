"""The model families and their registry.

  family = models.get('llada')            # a `base.Family`
  family = models.of(config)              # the family of a config
  config = models.get_preset('tiny')      # presets of every family, by name
  d = models.config_to_dict(config)       # JSON (checkpoints), and back:
  config = models.config_from_dict(d)

A new family is a module that builds a `Family` and calls `register(FAMILY)`;
the built-in ones register when this package is first asked for a family.
(The package face, `models/__init__.py`, hands these names on.)
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from dllm_jax import ids as ids_lib
from dllm_jax.models.base import Family, Params

_BUILTIN = ('dllm_jax.models.llada', 'dllm_jax.models.llada_moe',
            'dllm_jax.models.llada2')
_FAMILIES: dict[str, Family] = {}
_loaded = False

__all__ = ['Family', 'Params', 'register', 'get', 'names', 'of', 'get_preset',
           'preset_names', 'preset_family', 'config_to_dict', 'config_from_dict']


def _load_builtins() -> None:
  global _loaded
  if not _loaded:
    _loaded = True
    for module in _BUILTIN:
      register(importlib.import_module(module).FAMILY)


def register(family: Family) -> Family:
  """Adds a family (its name must be new, and so must its preset names)."""
  if family.name in _FAMILIES and _FAMILIES[family.name] is not family:
    raise ValueError(f'a model family named {family.name!r} is already registered.')
  if getattr(family.config_cls, 'family', None) != family.name:
    raise ValueError(f'{family.config_cls.__name__}.family must be {family.name!r}.')
  for other in _FAMILIES.values():
    clash = set(other.presets) & set(family.presets)
    if other is not family and clash:
      raise ValueError(f'preset names {sorted(clash)} of family {family.name!r} are '
                       f'already presets of {other.name!r}.')
  _FAMILIES[family.name] = family
  return family


def get(name: str) -> Family:
  _load_builtins()
  if name not in _FAMILIES:
    raise ValueError(f'unknown model family {name!r}; known: {sorted(_FAMILIES)}.')
  return _FAMILIES[name]


def names() -> list[str]:
  _load_builtins()
  return sorted(_FAMILIES)


def of(config: Any) -> Family:
  """The family of a model config."""
  return get(type(config).family)


def preset_names() -> list[str]:
  _load_builtins()
  return sorted(p for f in _FAMILIES.values() for p in f.presets)


def preset_family(preset: str) -> Family:
  _load_builtins()
  for family in _FAMILIES.values():
    if preset in family.presets:
      return family
  raise ValueError(f'unknown model preset {preset!r}; known: {preset_names()}.')


def _fold_ids(fields: dict[str, Any]) -> dict[str, Any]:
  """`mask_id=...`-style fields (older checkpoints, overrides) into `ids`."""
  flat = {r: fields.pop(f'{r}_id') for r in ids_lib.SPECIAL_ROLES
          if f'{r}_id' in fields}
  ids = fields.get('ids')
  if isinstance(ids, dict):
    ids = ids_lib.SpecialIds(**ids)
  if flat:
    base = dataclasses.asdict(ids) if ids is not None else {}
    ids = ids_lib.SpecialIds(**{**base, **flat})
  if ids is not None:
    fields['ids'] = ids
  return fields


def _build(family: Family, fields: dict[str, Any]):
  known = {f.name for f in dataclasses.fields(family.config_cls)}
  unknown = set(fields) - known
  if unknown:
    raise ValueError(f'unknown {family.name} model config field(s) {sorted(unknown)}; '
                     f'known: {sorted(known)}.')
  return family.config_cls(**fields)


def get_preset(name: str, **overrides: Any):
  """The config of a named preset (of any family), with fields overridden.
  Special ids may be given as `ids=SpecialIds(...)` or as `mask_id=...` etc."""
  family = preset_family(name)
  fields = _fold_ids({**family.presets[name]})
  fields.update(_fold_ids(dict(overrides)))
  return _build(family, fields)


def config_to_dict(config: Any) -> dict[str, Any]:
  """A JSON-serialisable record of a model config, its family included."""
  return {'family': type(config).family, **dataclasses.asdict(config)}


def config_from_dict(d: dict[str, Any]):
  """Rebuilds a model config from `config_to_dict` (or from the flat LLaDA
  record older checkpoints hold: no family, `mask_id`... fields)."""
  fields = dict(d)
  family = get(fields.pop('family', 'llada'))
  return _build(family, _fold_ids(fields))
