"""What a model family gives the rest of dllm_jax: the `Family` record.

A family is a mask predictor architecture (LLaDA's dense Transformer, an MoE
variant, a toy in a test). The trainer, samplers, likelihood, checkpoints,
sharding and weight import reach a model only through these calls, so adding a
family is one module that builds a `Family` and one `register` call.

Every call is pure and takes the family's config (a frozen, hashable dataclass:
a static jit argument) as `config=`:

  init_params(config, key) -> params                     nested dict of arrays
  forward(params, tokens [B, L], attention, positions [B, L] | None, *, config,
          output_window=(start, length) | None) -> logits [B, L or length, V]
  prefill(params, tokens [B, T], attention, positions, *, config,
          output_window) -> (logits, cache)             cache of the whole canvas
  window(params, tokens [B, W], start, cache, attention, positions, *, config,
         output_length) -> (logits [B, output_length, V], cache)
         # queries [start, start + W) against the cache, their fresh keys and
         # values written into it; `attention`/`positions` cover the T keys.
  param_axes(path_names, ndim) -> logical axes (parallel/sharding.py's table)

`attention` is an `attention.AttentionSpec`. A config class must have the
fields `vocab_size`, `max_len`, `dtype`, `param_dtype`, `causal` and `ids`
(`SpecialIds`), a class attribute `family` (its registry name), and the methods
`num_params()`, `num_active_params()` and `forward_flops_per_token(seq_len)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Sequence

Params = dict  # Nested dict of arrays, as `nnx.to_pure_dict` returns.


class HFTensor(NamedTuple):
  """An `hf_name_map` entry beyond (name, path, transpose?): one parameter made
  of several Hugging Face tensors (e.g. per-expert matrices stacked [E, ...]).
  `to_ours(arrays)` builds the parameter from the tensors of `hf_names` (numpy,
  in that order); `to_hf(array)` inverts it; `dtype` (e.g. 'float32' for a
  router) overrides the parameter dtype on load and save."""

  hf_names: Sequence[str]
  path: tuple
  to_ours: Callable[[list], Any]
  to_hf: Callable[[Any], list]
  dtype: str | None = None


@dataclasses.dataclass(frozen=True)
class Family:
  """One model family: its config class, presets and pure calls (see module doc).

  `check_mesh(config, mesh_shape)` raises a one-line ValueError when the model
  cannot be split over a mesh (e.g. heads not divisible by the tensor axis).
  `hf_name_map(config)` yields (Hugging Face tensor name, parameter path,
  transpose?) for every parameter (`interop/hf.py` reads and writes with it),
  or is None for a family without released weights.
  `compute_fields` are config fields that change how, not what, the model
  computes (dtype, remat, ...): a resume may change them.

  Optional training hooks (None for a family without them; a mixture of experts
  uses both): `forward_aux(params, tokens, attention, positions, *, config)
  -> (logits, aux)` with aux['loss'] (a scalar the train step adds to the
  loss), aux['metrics'] (scalars it logs) and anything `after_step` needs;
  `after_step(new_params, old_params, aux, *, config) -> params` runs on the
  parameters after each optimizer update (e.g. a router's load-balancing bias).
  """

  name: str
  config_cls: type
  presets: Mapping[str, Mapping[str, Any]]
  init_params: Callable[..., Params]
  forward: Callable[..., Any]
  prefill: Callable[..., Any]
  window: Callable[..., Any]
  param_axes: Callable[[tuple, int], tuple]
  check_mesh: Callable[[Any, Mapping[str, int]], None] = lambda config, shape: None
  hf_name_map: Callable[[Any], Any] | None = None
  compute_fields: tuple[str, ...] = ()
  forward_aux: Callable[..., Any] | None = None
  after_step: Callable[..., Params] | None = None
