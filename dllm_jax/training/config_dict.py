"""The launchers' ml_collections ConfigDict, written out from the typed sections.

The defaults live in `sections.py` alone; `launch/configs/*.py` start from
`config_dict()` (and change what their run needs), and `--config.KEY=VALUE`
flags override it. A field that may be None becomes a typed placeholder, so a
flag can still set it.

  config = config_dict()                      # RunConfig()'s defaults
  RunConfig.of(config) == RunConfig()         # and back
"""

from __future__ import annotations

import dataclasses
import typing

import ml_collections
from ml_collections import config_dict as config_dict_lib

from dllm_jax.training import sections

__all__ = ['config_dict']


def config_dict(section: sections.Section | None = None) -> ml_collections.ConfigDict:
  """The ConfigDict of a section (nested sections too); default: `RunConfig()`."""
  section = sections.RunConfig() if section is None else section
  hints = typing.get_type_hints(type(section))
  out = ml_collections.ConfigDict()
  for f in dataclasses.fields(section):
    value = getattr(section, f.name)
    if isinstance(value, sections.Section):
      out[f.name] = config_dict(value)
    elif value is None:
      kind = next(a for a in typing.get_args(hints[f.name]) if a is not type(None))
      out[f.name] = config_dict_lib.placeholder(kind)
    else:
      out[f.name] = value
  return out
