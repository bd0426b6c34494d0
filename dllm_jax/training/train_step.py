"""Train state and the jitted train step (pure: `(state, batch, key) -> (state, metrics)`)."""

from __future__ import annotations

from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import optax

from dllm_jax import models, objectives
from dllm_jax.models import ModelConfig
from dllm_jax.objectives import masked


NONFINITE_POLICIES = ('stop', 'skip')


def fresh_guard(skipped: int = 0) -> dict[str, jax.Array]:
  """The non-finite guard: first bad step (-1: none), its loss and gradient norm,
  and the number of skipped updates."""
  return {'first_bad_step': jnp.asarray(-1, jnp.int32),
          'bad_loss': jnp.asarray(0.0, jnp.float32),
          'bad_grad_norm': jnp.asarray(0.0, jnp.float32),
          'skipped': jnp.asarray(skipped, jnp.int32)}


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # [] int32.
  params: models.Params
  opt_state: optax.OptState
  guard: dict[str, jax.Array]  # See `fresh_guard`.


def init_train_state(model_cfg: ModelConfig, optimizer: optax.GradientTransformation,
                     key: jax.Array) -> TrainState:
  """Fresh state (jit it so parameters are created on device)."""
  params = models.init_params(model_cfg, key)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), guard=fresh_guard())


def _split_microbatches(lb: masked.LossBatch, n: int) -> masked.LossBatch:
  def split(x):
    if x.ndim == 0:  # The shared denominator.
      return jnp.broadcast_to(x, (n,))
    if x.shape[0] % n:
      raise ValueError(f'batch size {x.shape[0]} is not divisible by '
                       f'grad_accum_steps={n}.')
    return x.reshape(n, x.shape[0] // n, *x.shape[1:])
  return jax.tree.map(split, lb)


# Model-family training hooks (models/base.py: Family.forward_aux, after_step):
# a family with `forward_aux` gives (logits, aux); aux['loss'] is added to the
# loss (split evenly over microbatches), aux['metrics'] are logged, and the
# whole aux (averaged over microbatches) goes to `after_step(new_params,
# old_params, aux)` after the optimizer update. Other families: no change.
def _logits_and_aux(model_cfg, params, lb: masked.LossBatch):
  """(logits, aux): a family with router statistics (`Family.forward_aux`,
  mixtures of experts) returns them and an auxiliary loss; others none."""
  family = models.of(model_cfg)
  if family.forward_aux is None:
    return models.forward(params, lb.inputs, positions=lb.positions,
                          config=model_cfg, attention=lb.attention), {}
  return family.forward_aux(params, lb.inputs, lb.attention, lb.positions,
                            config=model_cfg)


def _after_step(model_cfg, new_params, old_params, aux):
  """The family's update after the optimizer's (the MoE expert-bias balance)."""
  family = models.of(model_cfg)
  if family.after_step is None:
    return new_params
  return family.after_step(new_params, old_params, aux, config=model_cfg)


def _check_policy(nonfinite: str) -> None:
  if nonfinite not in NONFINITE_POLICIES:
    raise ValueError(f'unknown non-finite policy {nonfinite!r}; known: '
                     f'{NONFINITE_POLICIES}.')


def _grad_fn(model_cfg, grad_accum_steps: int, debug_nan_step: int):
  """`(params, loss batch, step) -> ((loss, aux), grads)`: the objective's loss,
  the family's auxiliary loss split over microbatches, NaN at `debug_nan_step`."""

  def loss_fn(params, lb: masked.LossBatch, step):
    logits, aux = _logits_and_aux(model_cfg, params, lb)
    loss = masked.loss_from_logits(logits, lb)
    if 'loss' in aux:
      loss = loss + aux['loss'] / grad_accum_steps
    if debug_nan_step >= 0:
      loss = loss + jnp.where(step == debug_nan_step, jnp.nan, 0.0)
    return loss, aux

  return jax.value_and_grad(loss_fn, has_aux=True)


def _loss_and_grads(grad_fn, params, lb: masked.LossBatch, step, grad_accum_steps: int):
  """((loss, aux), grads) of the whole batch; with `grad_accum_steps` > 1 the
  gradients of its microbatches summed (aux averaged over them)."""
  if grad_accum_steps == 1:
    return grad_fn(params, lb, step)

  def micro(carry, mb):
    (loss, aux), grads = grad_fn(params, mb, step)
    return jax.tree.map(jnp.add, carry, (loss, grads)), aux
  zeros = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
  (loss, grads), aux = jax.lax.scan(micro, zeros,
                                    _split_microbatches(lb, grad_accum_steps))
  return (loss, jax.tree.map(lambda a: jnp.mean(a, 0), aux)), grads


def _guarded(state: TrainState, loss, grad_norm, params, opt_state, nonfinite: str):
  """(params, opt_state, guard) after the non-finite guard: the new ones where
  the step is finite and no earlier step stopped the run, else the old ones."""
  g = state.guard
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  apply = finite & (g['first_bad_step'] < 0)
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
  first_bad = (~finite) & (g['first_bad_step'] < 0) & (nonfinite == 'stop')
  guard = {
      'first_bad_step': jnp.where(first_bad, state.step, g['first_bad_step']),
      'bad_loss': jnp.where(first_bad, loss, g['bad_loss']),
      'bad_grad_norm': jnp.where(first_bad, grad_norm, g['bad_grad_norm']),
      'skipped': g['skipped'] + ((~finite) & (nonfinite == 'skip')).astype(jnp.int32),
  }
  return keep(params, state.params), keep(opt_state, state.opt_state), guard


def _metrics(loss, grad_norm, learning_rate, lb: masked.LossBatch, guard,
             aux) -> dict[str, Any]:
  """What a step logs (the family's own metrics, e.g. router statistics, too)."""
  return {
      'loss': loss,
      'grad_norm': grad_norm,
      'learning_rate': learning_rate,
      'masked_tokens': jnp.sum(lb.weights > 0),
      'skipped_updates': guard['skipped'],
      **aux.get('metrics', {}),
  }


def _jit(train_step, state_shardings, batch_sharding):
  """The step jitted, state donated; with shardings, metrics and key replicated."""
  if state_shardings is None:
    return jax.jit(train_step, donate_argnums=0)
  replicated = jax.sharding.NamedSharding(batch_sharding.mesh, jax.P())
  return jax.jit(train_step, donate_argnums=0,
                 in_shardings=(state_shardings, batch_sharding, replicated),
                 out_shardings=(state_shardings, replicated))


def make_train_step(model_cfg: ModelConfig, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, *, objective: str = 'pretrain',
                    grad_accum_steps: int = 1,
                    random_length_prob: float = masked.RANDOM_LENGTH_PROB,
                    stratified_t: bool = False, nonfinite: str = 'stop',
                    debug_nan_step: int = -1, state_shardings=None,
                    batch_sharding=None, block_options=None):
  """Builds the jitted step.

  The step draws its masking noise from `fold_in(key, state.step)`, so a resumed
  run sees the same noise as an uninterrupted one. With `grad_accum_steps` > 1 the
  batch is split into microbatches whose gradients are summed; every microbatch
  uses the full batch's loss denominator, so the update equals the one-shot one.

  A non-finite loss or gradient norm never reaches the parameters. `nonfinite`
  'stop': the state halts at the first bad step (no later update applies) and
  `state.guard` records it for the host to report; 'skip': the update is skipped
  and counted. `debug_nan_step` >= 0 makes the loss NaN at that step (tests).

  With `state_shardings` (a TrainState of shardings, `parallel.sharding`) and
  `batch_sharding`, the step is jitted with those in/out shardings (metrics and
  key replicated); the state is donated either way.

  `objective` names an `objectives.Objective`: it turns the data batch into the
  loss batch (masked inputs, the attention rule, targets, weights).

  Returns:
    `train_step(state, batch, key) -> (state, metrics)`; `batch` holds the
    objective's schema fields (`tokens` [B, L] and optionally `segment_ids`,
    `positions`, `prompt_lengths`).
  """
  _check_policy(nonfinite)
  make_loss_batch = objectives.get(objective).loss_batch
  settings = objectives.Settings(ids=model_cfg.ids,
                                 random_length_prob=random_length_prob,
                                 stratified_t=stratified_t, block=block_options)
  grad_fn = _grad_fn(model_cfg, grad_accum_steps, debug_nan_step)

  def train_step(state: TrainState, batch: Mapping[str, jax.Array],
                 key: jax.Array) -> tuple[TrainState, dict[str, Any]]:
    lb = make_loss_batch(batch, jax.random.fold_in(key, state.step), settings,
                         state.step)
    (loss, aux), grads = _loss_and_grads(grad_fn, state.params, lb, state.step,
                                         grad_accum_steps)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = _after_step(model_cfg, optax.apply_updates(state.params, updates),
                         state.params, aux)
    params, opt_state, guard = _guarded(state, loss, grad_norm, params, opt_state,
                                        nonfinite)
    metrics = _metrics(loss, grad_norm, schedule(state.step), lb, guard, aux)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                      guard=guard), metrics

  return _jit(train_step, state_shardings, batch_sharding)
