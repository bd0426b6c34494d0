"""Training objectives, by name: what each one's data batch holds, the attention
its model call runs under, and how a batch becomes a `masked.LossBatch`.

  obj = objectives.get('pretrain')
  obj.schema(batch_size, seq_len, packing)    # {field: shape} of a data batch
  lb = obj.loss_batch(batch, key, settings)   # inputs, attention, targets, ...

Adding an objective is one function and one entry (`block_diffusion` below is
one):

  def _mine(batch, key, s: Settings, step=None) -> masked.LossBatch: ...
  register(Objective('mine', _mine, schema=text_schema, data='text'))

The trainer then accepts `--config.train.objective=mine`: the config
check, the abstract batch it compiles for, the dataset it reads (`data`) and
the model's default attention (`causal_model`) all come from the entry. A
setting the objective needs (a block size) goes into `Settings` and
`TrainSection` (training/sections.py), with its allowed range there.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from dllm_jax.ids import SpecialIds
from dllm_jax.models.attention import AttentionSpec, causal
from dllm_jax.objectives import block as block_diffusion
from dllm_jax.objectives import masked

DATA_KINDS = ('text', 'chat')  # Packed documents (pretraining) | chat examples.


@dataclasses.dataclass(frozen=True)
class Settings:
  """The train config's knobs an objective reads (static under jit)."""

  ids: SpecialIds  # The tokenizer's special ids (the model config's `ids`).
  random_length_prob: float = masked.RANDOM_LENGTH_PROB
  stratified_t: bool = False
  eps: float = masked.EPS
  block: Any = None  # block_diffusion.BlockDiffusionOptions (objective block_diffusion).


def text_schema(batch_size: int, seq_len: int, packing: str) -> dict[str, tuple]:
  """Packed text rows: tokens, plus document segments and positions unless the
  packing is 'stream' (no document boundaries)."""
  rows = {'tokens': (batch_size, seq_len)}
  if packing != 'stream':
    rows.update(segment_ids=(batch_size, seq_len), positions=(batch_size, seq_len))
  return rows


def chat_schema(batch_size: int, seq_len: int, packing: str) -> dict[str, tuple]:
  """One chat example per row: tokens and where each answer starts."""
  del packing  # Chat rows are never packed.
  return {'tokens': (batch_size, seq_len), 'prompt_lengths': (batch_size,)}


@dataclasses.dataclass(frozen=True)
class Objective:
  """A training objective.

  loss_batch(batch, key, settings, step) -> LossBatch: pure, jittable; `batch`
    holds the `schema` fields as int32 arrays; `step` ([] int) is the train
    step (schedules over training, e.g. a growing block size).
  schema(batch_size, seq_len, packing) -> {field: shape}: the data batch.
  data: the dataset kind it trains on (`DATA_KINDS`).
  attention(batch) -> AttentionSpec: the rule its model call runs under (the
    loss batch may refine it, e.g. a truncation's key lengths).
  causal_model: the model config is causal (its default attention outside
    training, e.g. the autoregressive sampler).
  """

  name: str
  loss_batch: Callable[[Mapping[str, jax.Array], jax.Array, Settings, jax.Array],
                       masked.LossBatch]
  schema: Callable[[int, int, str], dict[str, tuple]] = text_schema
  data: str = 'text'
  attention: Callable[[Mapping[str, jax.Array]], AttentionSpec] = (
      lambda batch: AttentionSpec(segment_ids=batch.get('segment_ids')))
  causal_model: bool = False

  def abstract_batch(self, batch_size: int, seq_len: int, packing: str,
                     sharding=None) -> dict[str, jax.ShapeDtypeStruct]:
    """The data batch as int32 `jax.ShapeDtypeStruct`s (to compile ahead)."""
    return {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding)
            for k, shape in self.schema(batch_size, seq_len, packing).items()}


_OBJECTIVES: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
  if objective.name in _OBJECTIVES and _OBJECTIVES[objective.name] is not objective:
    raise ValueError(f'an objective named {objective.name!r} is already registered.')
  if objective.data not in DATA_KINDS:
    raise ValueError(f'objective {objective.name!r}: data={objective.data!r} is not '
                     f'one of {DATA_KINDS}.')
  _OBJECTIVES[objective.name] = objective
  return objective


def get(name: str) -> Objective:
  if name not in _OBJECTIVES:
    raise ValueError(f'unknown objective {name!r}; known: {names()}.')
  return _OBJECTIVES[name]


def names() -> tuple[str, ...]:
  return tuple(_OBJECTIVES)


def _pretrain(batch, key, s: Settings, step=None) -> masked.LossBatch:
  del step
  noise = masked.sample_noise(key, batch['tokens'].shape, s.random_length_prob,
                                 s.stratified_t)
  return masked.pretrain_batch(batch, noise, mask_id=s.ids.mask, eps=s.eps,
                                  attention=PRETRAIN.attention(batch))


def _sft(batch, key, s: Settings, step=None) -> masked.LossBatch:
  del step
  # No random truncation: it would cut answers, not documents.
  noise = masked.sample_noise(key, batch['tokens'].shape, 0.0, s.stratified_t)
  return masked.sft_batch(batch, noise, mask_id=s.ids.mask, eps=s.eps,
                             attention=SFT.attention(batch))


def _next_token(batch, key, s: Settings, step=None) -> masked.LossBatch:
  del key, s, step  # Deterministic: no masking noise.
  return masked.next_token_batch(batch, attention=NEXT_TOKEN.attention(batch))


PRETRAIN = register(Objective('pretrain', _pretrain))
SFT = register(Objective('sft', _sft, schema=chat_schema, data='chat'))
NEXT_TOKEN = register(Objective(
    'next_token', _next_token, causal_model=True,
    attention=lambda batch: causal(segment_ids=batch.get('segment_ids'))))


def _block_diffusion(batch, key, s: Settings, step=None) -> masked.LossBatch:
  return block_diffusion.make_loss_batch(batch, key, 0 if step is None else step,
                                         mask_id=s.ids.mask, options=s.block)


# Block diffusion (objectives/block.py): [x_t, x_0] side by side under
# the three-part mask its loss batch carries; block-causal outside training.
BLOCK_DIFFUSION = register(Objective(
    'block_diffusion', _block_diffusion,
    attention=lambda batch: AttentionSpec(segment_ids=batch.get('segment_ids'))))
