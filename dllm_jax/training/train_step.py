"""Train state and the jitted train step (pure: `(state, batch, key) -> (state, metrics)`)."""

from __future__ import annotations

from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import optax

from dllm_jax import block_diffusion, diffusion
from dllm_jax import model as model_lib
from dllm_jax.presets import ModelConfig


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
  params: model_lib.Params
  opt_state: optax.OptState
  guard: dict[str, jax.Array]  # See `fresh_guard`.


def init_train_state(model_cfg: ModelConfig, optimizer: optax.GradientTransformation,
                     key: jax.Array) -> TrainState:
  """Fresh state (jit it so parameters are created on device)."""
  params = model_lib.init_params(model_cfg, key)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), guard=fresh_guard())


def _split_microbatches(lb: diffusion.LossBatch, n: int) -> diffusion.LossBatch:
  def split(x):
    if x.ndim == 0:  # The shared denominator.
      return jnp.broadcast_to(x, (n,))
    if x.shape[0] % n:
      raise ValueError(f'batch size {x.shape[0]} is not divisible by '
                       f'grad_accum_steps={n}.')
    return x.reshape(n, x.shape[0] // n, *x.shape[1:])
  return jax.tree.map(split, lb)


def make_train_step(model_cfg: ModelConfig, optimizer: optax.GradientTransformation,
                    schedule: optax.Schedule, *, objective: str = 'pretrain',
                    grad_accum_steps: int = 1,
                    random_length_prob: float = diffusion.RANDOM_LENGTH_PROB,
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
  key replicated); the state is donated either way. `block_options`
  (`block_diffusion.BlockDiffusionOptions`) configure objective='block_diffusion'.

  Returns:
    `train_step(state, batch, key) -> (state, metrics)`; `batch` holds `tokens`
    [B, L] and optionally `segment_ids`, `positions`, `prompt_lengths`.
  """

  if nonfinite not in NONFINITE_POLICIES:
    raise ValueError(f'unknown non-finite policy {nonfinite!r}; known: '
                     f'{NONFINITE_POLICIES}.')

  def loss_fn(params, lb: diffusion.LossBatch, step):
    if lb.attention is not None:
      logits = model_lib.forward(params, lb.inputs, positions=lb.positions,
                                 config=model_cfg, attention=lb.attention)
    else:
      logits = model_lib.forward(params, lb.inputs, lb.segment_ids, lb.positions,
                                 config=model_cfg, kv_lengths=lb.kv_lengths)
    loss = diffusion.loss_from_logits(logits, lb)
    if debug_nan_step >= 0:
      loss = loss + jnp.where(step == debug_nan_step, jnp.nan, 0.0)
    return loss

  grad_fn = jax.value_and_grad(loss_fn)

  def train_step(state: TrainState, batch: Mapping[str, jax.Array],
                 key: jax.Array) -> tuple[TrainState, dict[str, Any]]:
    step_key = jax.random.fold_in(key, state.step)
    if objective == 'block_diffusion':
      lb = block_diffusion.make_loss_batch(batch, step_key, state.step,
                                           mask_id=model_cfg.ids.mask,
                                           options=block_options)
    else:
      lb = diffusion.make_loss_batch(objective, batch, step_key,
                                     mask_id=model_cfg.ids.mask,
                                     random_length_prob=random_length_prob,
                                     stratified_t=stratified_t)
    if grad_accum_steps == 1:
      loss, grads = grad_fn(state.params, lb, state.step)
    else:
      def micro(carry, mb):
        loss, grads = grad_fn(state.params, mb, state.step)
        return jax.tree.map(jnp.add, carry, (loss, grads)), None
      zeros = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.params))
      (loss, grads), _ = jax.lax.scan(micro, zeros,
                                      _split_microbatches(lb, grad_accum_steps))
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

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
    metrics = {
        'loss': loss,
        'grad_norm': grad_norm,
        'learning_rate': schedule(state.step),
        'masked_tokens': jnp.sum(lb.weights > 0),
        'skipped_updates': guard['skipped'],
    }
    return TrainState(step=state.step + 1, params=keep(params, state.params),
                      opt_state=keep(opt_state, state.opt_state), guard=guard), metrics

  if state_shardings is None:
    return jax.jit(train_step, donate_argnums=0)
  replicated = jax.sharding.NamedSharding(batch_sharding.mesh, jax.P())
  return jax.jit(train_step, donate_argnums=0,
                 in_shardings=(state_shardings, batch_sharding, replicated),
                 out_shardings=(state_shardings, replicated))
