"""Block-diffusion sampling with an exact KV cache (LLaDA2 / dInfer), one jitted loop.

The canvas is cut into blocks of `block_length` counted from each row's position
0 (the prompt included, as LLaDA2 aligns them). Attention is block-causal, so
the keys/values of a finished block never change: the prompt's whole blocks are
prefilled once, each step runs only the current block against the cache, and a
finished block's keys/values are written once from its final tokens (a separate
forward, or fused into the next block's first step with `fuse_write`). Inside
a block, masked positions are committed by the `fixed`, `threshold` or `factor`
rule; `editing_threshold` > 0 adds LLaDA2.1's token editing. A row stops at the
end of the block in which it produced EOS (its length is returned), or as
`eos_early_stop` says (see `BlockSamplingConfig`); the loop stops when every
row has, all inside one `lax.while_loop` over the steps of a `BlockWalk` (the
server runs them a block per call: serving/block_rows.py). The run counts its
forwards: per row those that decided its tokens (`decisions`: the reference's
forward count for that prompt alone), and all it ran (`forwards`: with the
cache prefill and the block writes).

Rows with different prompt lengths share one canvas: row b is shifted right by a
whole number of blocks so that every row's first generated block is the same
canvas block; the slots before it are padding (its own segment, never
attended by the row), and RoPE positions restart at the row's first token, so
each row computes exactly what it would alone.

  out = generate(params, prompts, key, config=cfg, sampling=BlockSamplingConfig(),
                 prompt_lengths=lengths)   # out.tokens [B, gen], out.lengths [B]
"""

from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax import models
from dllm_jax.models.attention import AttentionSpec
from dllm_jax.sampling import remasking
from dllm_jax.sampling.block_config import (CONFIDENCES, PARALLEL, THRESHOLD_RULES,
                                           BlockKnobs, BlockSamplingConfig)
from dllm_jax.sampling.generate import select_factor

__all__ = ['BlockKnobs', 'BlockSample', 'BlockSamplingConfig', 'BlockWalk', 'CONFIDENCES',
           'PARALLEL', 'THRESHOLD_RULES', 'check_model', 'draw', 'generate', 'layout',
           'placement', 'select', 'transfer_schedule', 'walk']


@flax.struct.dataclass
class BlockSample:
  # [B, W] int32, W = `answer_width()` (gen_length unless eos_early_stop may
  # end a row in its last block's tail); EOS after each row's length.
  tokens: jax.Array
  lengths: jax.Array  # [B] int32: tokens up to and including the first EOS.
  nfe: jax.Array  # [] int32: model forwards of the loop (steps and block writes).
  # [B] int32: the steps that decided row b's tokens (forwards in which it had
  # a block to denoise): what the reference runs for that prompt alone.
  decisions: jax.Array
  forwards: jax.Array  # [] int32: every forward of the batch (nfe + prefill).


def transfer_schedule(block_length: int, steps: int) -> np.ndarray:
  """Tokens per step [steps]: block_length / steps, the remainder on the first."""
  n = np.full(steps, block_length // steps, np.int32)
  n[:block_length % steps] += 1
  return n


def select(confidence: jax.Array, eligible: jax.Array, n: jax.Array,
           sc: BlockSamplingConfig, knobs: BlockKnobs | None = None) -> jax.Array:
  """Positions to commit [B, W] from confidences [B, W], masked positions
  `eligible` [B, W] and the step's n_s [B] (at-least / fixed count); the
  threshold and factor from `knobs` (default: `sc`'s own)."""
  knobs = BlockKnobs.of(sc) if knobs is None else knobs
  if sc.parallel == 'factor':
    return select_factor(confidence, eligible, knobs.factor)
  top = remasking.select_top_k(confidence, eligible, n)
  if sc.parallel == 'fixed':
    return top
  if sc.threshold_rule == 'dinfer':
    best = jnp.max(jnp.where(eligible, confidence, -jnp.inf), axis=1, keepdims=True)
    cut = jnp.clip(best - 1e-5, -1000.0, knobs.threshold)
    return eligible & (confidence >= cut)
  high = eligible & (confidence > knobs.threshold)
  enough = high.sum(axis=1, keepdims=True) >= n[:, None]
  return jnp.where(enough, high, top)


def draw(logits: jax.Array, key: jax.Array, sc: BlockSamplingConfig,
         ids, knobs: BlockKnobs | None = None) -> tuple[jax.Array, jax.Array]:
  """Candidates int32 [B, W] and their confidences float32 [B, W] from logits
  [B, W, V] (see `temperature` and `confidence` of `BlockSamplingConfig`):
  noise is drawn when `sc.temperature` > 0, at `knobs.temperature`."""
  noised = sc.temperature > 0
  t = (BlockKnobs.of(sc) if knobs is None else knobs).temperature if noised else 0.0
  if noised and sc.confidence == 'tempered':
    # argmax(l / T + G) is argmax(l - T log(-log u)) scaled by 1/T: the same
    # draw, and the confidence becomes softmax(l / T) at the candidate.
    logits, t = logits.astype(jnp.float32) / t, 1.0
  return remasking.candidates_and_confidence(
      logits, key, temperature=t, noised=noised, remasking='low_confidence',
      mask_id=ids.mask, eos_id=ids.eos, eot_id=ids.eot)


def check_model(config, sc: BlockSamplingConfig, meta: dict | None = None) -> None:
  """One-line ValueErrors for a model the block sampler cannot run: the causal
  autoregressive twin, or a checkpoint (its `meta`, `checkpoint.read_meta`)
  trained without blocks or with another block size."""
  if getattr(config, 'causal', False):
    raise ValueError('the block sampler needs a block-diffusion model; this config '
                     'is causal (the autoregressive twin: use sampling/autoregressive.py).')
  if meta is None:
    return
  train = meta.get('config', {}).get('train', {})
  objective = train.get('objective')
  if objective != 'block_diffusion':
    raise ValueError(f'the checkpoint was trained with objective {objective!r}, '
                     'without blocks; the block sampler needs train.objective='
                     "'block_diffusion' (use sampling/generate.py for it).")
  trained = train.get('block', {}).get('block_size')
  if trained is not None and trained != sc.block_length:
    raise ValueError(f'block_length={sc.block_length} differs from the block size '
                     f'{trained} the checkpoint was trained with.')


def layout(prompt_lengths: np.ndarray, block: int, gen: int):
  """Static canvas layout of ragged prompts: (first generated block K, blocks
  after it N, per-row shifts s [B], per-row last block [B])."""
  first = prompt_lengths // block
  k = int(first.max())
  n = int((-(-(prompt_lengths + gen) // block) - first).max())  # Blocks a row generates.
  shift, last = placement(prompt_lengths, k, block, gen)
  return k, n, shift.astype(np.int32), last.astype(np.int32)


def placement(prompt_lengths, k0: int, block: int, gen: int):
  """Where rows of prompt lengths [B] (NumPy or traced) go on a canvas whose
  first generated block is k0: (shifts [B], last blocks [B])."""
  first = prompt_lengths // block
  own = -(-(prompt_lengths + gen) // block) - first
  return (k0 - first) * block, k0 + own - 1


def _canvas(prompts, prompt_lengths, shift, t, ids):
  """Canvas [B, T] (padding, prompt, MASK...), segment ids and RoPE positions."""
  i = jnp.arange(t)[None, :]
  src = i - shift[:, None]
  in_prompt = (src >= 0) & (src < prompt_lengths[:, None])
  tok = jnp.take_along_axis(prompts, jnp.clip(src, 0, prompts.shape[1] - 1), axis=1)
  x = jnp.where(in_prompt, tok, jnp.where(src < 0, ids.pad, ids.mask))
  seg = (src >= 0).astype(jnp.int32)
  return x.astype(jnp.int32), seg, jnp.maximum(src, 0).astype(jnp.int32)


def _step_logits(params, x, k, cache, pending, spec, pos, *, config, sc, b):
  """Logits [B, b, V] of block k (and the updated cache)."""
  start = k * b
  if not sc.cache:
    return models.forward(params, x, positions=pos, config=config,
                          attention=spec, output_window=(start, b)), cache

  def one(cache):
    return models.forward_window(
        params, jax.lax.dynamic_slice_in_dim(x, start, b, axis=1), start, cache,
        positions=pos, config=config, output_length=b, attention=spec)

  if not sc.fuse_write:
    return one(cache)

  def two(cache):  # The finished block's final keys/values, then this block.
    logits, cache = models.forward_window(
        params, jax.lax.dynamic_slice_in_dim(x, start - b, 2 * b, axis=1), start - b,
        cache, positions=pos, config=config, output_length=2 * b, attention=spec)
    return logits[:, b:], cache
  return jax.lax.cond(pending, two, one, cache)


def _write_block(params, x, k, cache, spec, pos, *, config, b):
  """Writes block k's keys/values from its final tokens (one forward)."""
  _, cache = models.forward_window(
      params, jax.lax.dynamic_slice_in_dim(x, k * b, b, axis=1), k * b, cache,
      positions=pos, config=config, output_length=1, attention=spec)
  return cache


def _commit(blk, cand, conf, s, sched, prompt_end_in_blk, *, sc, ids, knobs=None):
  """One step's decisions for block tokens blk [B, b]: (new block, settled [B],
  post [B]); `s` is the loop state, `knobs` the floats (default: `sc`'s)."""
  knobs = BlockKnobs.of(sc) if knobs is None else knobs
  b = blk.shape[1]
  is_mask = blk == ids.mask
  active = ~s['settled'] & ~s['done']
  n = jnp.full(blk.shape[:1], sched[jnp.minimum(s['step'], len(sched) - 1)])
  if sc.min_tokens:
    n = jnp.full_like(n, sc.min_tokens)
  take = select(conf, is_mask, n, sc, knobs) & active[:, None]
  edit = jnp.zeros_like(take)
  if sc.editing_threshold > 0:
    answer = jnp.arange(b)[None, :] >= prompt_end_in_blk[:, None]
    edit = (~is_mask & answer & (conf > knobs.editing_threshold) & (cand != blk)
            & active[:, None])
  new = jnp.where(take | edit, cand, blk)
  left = jnp.any(new == ids.mask, axis=1)
  if sc.editing_threshold > 0:
    quiet = ~jnp.any(is_mask, axis=1) & ~jnp.any(edit, axis=1)
    post = s['post'] + (~left).astype(jnp.int32)
    finished = quiet | (~left & (post > sc.max_post_steps))
  else:
    post, finished = s['post'], ~left
  return new, s['settled'] | (active & finished), post


def _early_stop(x, blk, new, active, prompt_end, k, end, *, sc, ids):
  """LLaDA2.0's `eos_early_stop` after one step: (rows that end now [B], the
  canvas index of the EOS each ended at [B], -1 if none). A row ends when this
  step committed an EOS into its block and no MASK lies between its prompt and
  its first answer EOS; canvas x [B, T] is after the step, blk / new [B, b]
  its block before / after."""
  if not sc.early_in_block():
    return jnp.zeros_like(active), end
  b = sc.block_length
  hit = active & jnp.any((blk == ids.mask) & (new == ids.eos), axis=1)
  idx = jnp.arange(x.shape[1])[None, :]
  region = (idx >= prompt_end[:, None]) & (idx < (k + 1) * b)
  first = jnp.argmax(region & (x == ids.eos), axis=1)  # Exists where `hit`.
  gap = jnp.any(region & (idx < first[:, None]) & (x == ids.mask), axis=1)
  early = hit & ~gap
  return early, jnp.where(early, first, end).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class BlockWalk:
  """One run, walked a step or a block at a time (built inside a trace):
  `init()` is the loop state before the first generated block (the prompt's
  whole blocks prefilled into the cache), `step(s)` one denoising step of every
  row still running, `run_block(s, live)` the steps until the current block
  ends, `answer(s)` the answers so far."""

  params: object
  x: jax.Array  # [B, T] the initial canvas (padding, prompt, MASK...).
  spec: AttentionSpec
  pos: jax.Array  # [B, T] RoPE positions.
  prompt_end: jax.Array  # [B] canvas index of each row's first answer slot.
  last_block: jax.Array  # [B] each row's last block.
  key: jax.Array
  config: object
  sc: BlockSamplingConfig  # Read the floats from `knobs`.
  knobs: BlockKnobs
  k0: int

  def init(self) -> dict:
    """The loop state: canvas x, KV cache, block k, step in it, per-row flags."""
    params, x, b = self.params, self.x, self.sc.block_length
    cache = None
    if self.sc.cache:  # A zero cache of the whole canvas, then the prompt's blocks.
      shapes = jax.eval_shape(lambda: models.forward_with_cache(
          params, x, positions=self.pos, config=self.config, attention=self.spec,
          output_window=(0, 1))[1])
      cache = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
      if self.k0:
        _, cache = models.forward_window(params, x[:, :self.k0 * b], 0, cache,
                                         positions=self.pos, config=self.config,
                                         output_length=1, attention=self.spec)
    bsz = x.shape[0]
    return dict(x=x, cache=cache, k=jnp.int32(self.k0), step=jnp.int32(0),
                post=jnp.zeros(bsz, jnp.int32), settled=jnp.zeros(bsz, bool),
                done=jnp.zeros(bsz, bool), pending=jnp.bool_(False),
                nfe=jnp.int32(0), decisions=jnp.zeros(bsz, jnp.int32),
                end=jnp.full(bsz, -1, jnp.int32), key=self.key)

  def step(self, s: dict) -> dict:
    """One step on block k; a block ends when every running row settled it."""
    params, config, sc, ids = self.params, self.config, self.sc, self.config.ids
    b, prompt_end, spec, pos = sc.block_length, self.prompt_end, self.spec, self.pos
    sched = jnp.asarray(transfer_schedule(b, sc.decision_steps()))
    k, x = s['k'], s['x']
    active = ~s['settled'] & ~s['done']
    logits, cache = _step_logits(params, x, k, s['cache'], s['pending'], spec, pos,
                                 config=config, sc=sc, b=b)
    key, sub = jax.random.split(s['key'])
    cand, conf = draw(logits, sub, sc, ids, self.knobs)
    blk = jax.lax.dynamic_slice_in_dim(x, k * b, b, axis=1)
    new, settled, post = _commit(blk, cand, conf, s, sched,
                                 jnp.clip(prompt_end - k * b, 0, b), sc=sc, ids=ids,
                                 knobs=self.knobs)
    x = jax.lax.dynamic_update_slice_in_dim(x, new, k * b, axis=1)
    early, end = _early_stop(x, blk, new, active, prompt_end, k, s['end'], sc=sc,
                             ids=ids)
    block_done = jnp.all(settled | s['done'] | early)
    # A row stops after a block holding EOS in its answer (LLaDA2.1 without
    # eos_early_stop: never), or after its last block.
    answer = k * b + jnp.arange(b)[None, :] >= prompt_end[:, None]
    eos = jnp.any((new == ids.eos) & answer, axis=1)
    if sc.editing_threshold > 0 and not sc.eos_early_stop:
      eos = jnp.zeros_like(eos)
    done = s['done'] | early | (block_done & (eos | (k >= self.last_block)))
    more = block_done & ~jnp.all(done)
    nfe = s['nfe'] + 1
    if sc.cache and not sc.fuse_write:
      cache = jax.lax.cond(more, lambda c: _write_block(params, x, k, c, spec, pos,
                                                        config=config, b=b),
                           lambda c: c, cache)
      nfe = nfe + more.astype(jnp.int32)
    return dict(x=x, cache=cache, k=k + block_done.astype(jnp.int32),
                step=jnp.where(block_done, 0, s['step'] + 1),
                post=jnp.where(block_done, 0, post),
                settled=jnp.where(block_done, done, settled), done=done,
                pending=more & sc.fuse_write, nfe=nfe,
                decisions=s['decisions'] + active.astype(jnp.int32), end=end, key=key)

  def run_block(self, s: dict, live=True) -> dict:
    """The steps until block k ends (or every row is done); none if not `live`."""
    k = s['k']
    return jax.lax.while_loop(
        lambda t: live & (t['k'] == k) & ~jnp.all(t['done']), self.step, s)

  def answer(self, s: dict) -> tuple[BlockSample, jax.Array]:
    """(`BlockSample` of the canvas now, answer tokens final so far [B]: up to
    the end of the last finished block, or the length once a row is done)."""
    gen = self.sc.gen_length
    out = _finish(s['x'], self.prompt_end, self.sc, self.config.ids, s,
                  prefill_forwards(self.sc, self.k0))
    ready = jnp.clip(s['k'] * self.sc.block_length - self.prompt_end, 0, gen)
    return out, jnp.where(s['done'], out.lengths, ready).astype(jnp.int32)


def walk(params, prompts, prompt_lengths, shift, last_block, key, *, config,
         sc: BlockSamplingConfig, k0: int, n_blocks: int,
         knobs: BlockKnobs | None = None) -> BlockWalk:
  """The `BlockWalk` of prompts [B, P] (right-padded; lengths [B]) placed on
  a canvas of k0 + n_blocks blocks by `shift` [B] (see `placement`); the
  floats from `knobs` (default: `sc`'s own)."""
  b = sc.block_length
  x, seg, pos = _canvas(prompts, prompt_lengths, shift, (k0 + n_blocks) * b, config.ids)
  return BlockWalk(params, x, AttentionSpec(segment_ids=seg, block_size=b), pos,
                   shift + prompt_lengths, last_block, key, config, sc,
                   BlockKnobs.of(sc) if knobs is None else knobs, k0)


@functools.partial(jax.jit, static_argnames=('config', 'sc', 'k0', 'n_blocks'))
def _sample(params, prompts, prompt_lengths, shift, last_block, key, knobs, *,
            config, sc: BlockSamplingConfig, k0: int, n_blocks: int) -> BlockSample:
  w = walk(params, prompts, prompt_lengths, shift, last_block, key, config=config,
           sc=sc, k0=k0, n_blocks=n_blocks, knobs=knobs)
  s = jax.lax.while_loop(lambda s: ~jnp.all(s['done']), w.step, w.init())
  return w.answer(s)[0]


def _finish(x, prompt_end, sc, ids, s, prefill: int) -> BlockSample:
  """Each row's answer [B, W] cut after its first EOS in the first gen_length
  tokens (inclusive), or at the EOS an early stop ended it at (`s['end']`)."""
  gen, width = sc.gen_length, sc.answer_width()
  idx = prompt_end[:, None] + jnp.arange(width)[None, :]
  out = jnp.take_along_axis(x, jnp.minimum(idx, x.shape[1] - 1), axis=1)
  is_eos = out[:, :gen] == ids.eos
  first = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1) + 1, gen)
  first = jnp.where(s['end'] >= 0, s['end'] - prompt_end + 1, first)
  out = jnp.where(jnp.arange(width)[None, :] < first[:, None], out, ids.eos)
  return BlockSample(tokens=out, lengths=first.astype(jnp.int32), nfe=s['nfe'],
                     decisions=s['decisions'], forwards=s['nfe'] + prefill)


def prefill_forwards(sc: BlockSamplingConfig, k0: int) -> int:
  """Forwards before the first step: 1 (the prompt's whole blocks into the
  cache) when there are some and the cache is on, else 0."""
  return int(bool(sc.cache) and k0 > 0)


def generate(params, prompts, key: jax.Array, *, config,
             sampling: BlockSamplingConfig,
             prompt_lengths=None, meta: dict | None = None) -> BlockSample:
  """Block-diffusion sampling of a batch of prompts.

  Args:
    params: model parameters.
    prompts: int [B, P] (right-padded when `prompt_lengths` is given).
    key: randomness (temperature > 0).
    config: the model config (bidirectional: not the causal twin).
    sampling: the knobs.
    prompt_lengths: int [B] host array (ragged prompts), default all P.
    meta: the checkpoint's meta, if any: checked to be a block-diffusion run.

  Returns:
    `BlockSample`: tokens [B, W] (W = `sampling.answer_width()`: gen_length
    unless eos_early_stop without editing; EOS after each row's length),
    lengths [B], decisions [B] (the forwards that decided each row's tokens),
    forwards [] (all of the batch's, prefill and block writes included), nfe.
  """
  sampling.validate()
  check_model(config, sampling, meta)
  prompts = np.asarray(prompts, np.int32)
  lengths = (np.full(prompts.shape[0], prompts.shape[1], np.int32)
             if prompt_lengths is None else np.asarray(prompt_lengths, np.int32))
  if lengths.min() < 1 or lengths.max() > prompts.shape[1]:
    raise ValueError(f'prompt_lengths must be in [1, {prompts.shape[1]}], got '
                     f'{lengths.tolist()}.')
  k0, n, shift, last = layout(lengths, sampling.block_length, sampling.gen_length)
  t = (k0 + n) * sampling.block_length
  if t > config.max_len:
    raise ValueError(f'the canvas needs {t} positions (prompt, gen_length '
                     f'{sampling.gen_length}, whole blocks of {sampling.block_length}), '
                     f'more than the model max_len {config.max_len}.')
  # The floats are traced: a new temperature or threshold reuses the program.
  return _sample(params, jnp.asarray(prompts), jnp.asarray(lengths), jnp.asarray(shift),
                 jnp.asarray(last), key, BlockKnobs.of(sampling), config=config,
                 sc=sampling.program_part(), k0=k0, n_blocks=n)
