"""The block sampler's part of serving (checkpoints trained with objective
block_diffusion): a run's default settings, the prompt buckets (`BlockLayout`),
the one-line checks, and one row's block step (`row_fns`), which
`stepper.RowBatch` runs for a batch of rows; `BlockSampler` is its
`sampler.SamplerProgram`.

A row is `block.BlockWalk` on a one-row canvas: its prompt is shifted by whole
blocks so that its answer starts in the bucket's block `first_block`, whatever
its length (RoPE positions restart at its first token; the padding before it is
another segment), so a row computes what `block.generate` computes for its
prompt alone. Each call runs the steps of the row's current block
(`BlockWalk.run_block`); a row is done at the end of the block where it
produced EOS, or after its last block.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.sampling import block
from dllm_jax.serving import sampler


class BlockLayout(NamedTuple):
  """The block sampler's prompt bucket: prompts of up to `width` tokens on a
  canvas whose first generated block is `first_block`, followed by `blocks`
  blocks (enough for any such prompt's answer)."""
  width: int
  first_block: int
  blocks: int


def defaults(meta: dict) -> block.BlockSamplingConfig:
  """A block-diffusion run's default settings (as `launch.sample`'s): its
  trained block size, one step per token, its sample length and temperature."""
  s, train = meta['config']['sample'], meta['config']['train']
  size = train.get('block', {}).get('block_size', s['block_length'])
  return block.BlockSamplingConfig(
      gen_length=s['gen_length'], block_length=size, steps=size, parallel='fixed',
      threshold=0.9, temperature=s['temperature'])


def canonical(sampling: block.BlockSamplingConfig) -> block.BlockSamplingConfig:
  """The settings with `steps` at most the block length and `minimal_topk`
  folded into it (steps = min(steps, gen_length // minimal_topk), then
  minimal_topk 1), the same answers: the schedule's first block_length steps
  commit at least one token each, so a block has no masks left by the later
  ones (which would commit none); other rules ignore it. Such requests then
  share one compiled program, and a huge `steps` no longer stalls the server's
  worker building a [steps] schedule (or fails it, 500). Settings that do not
  validate are left as they are (the check refuses them)."""
  try:
    sampling.validate()
  except ValueError:
    return sampling
  steps = min(sampling.decision_steps(), sampling.block_length)
  return dataclasses.replace(sampling, steps=steps, minimal_topk=1)


def layout_for(n: int, sampling: block.BlockSamplingConfig, prompt_buckets,
               max_len: int) -> BlockLayout:
  """The bucket of an n-token prompt: the smallest prompt bucket >= n whose
  canvas fits the model, else the prompt's own layout."""
  b, g = sampling.block_length, sampling.gen_length
  for width in sorted(prompt_buckets):
    # Rows of up to `width` tokens: answers start in block width // b, at an
    # offset up to min(width, b - 1) in it.
    blocks = -(-(min(width, b - 1) + g) // b)
    if n <= width and (width // b + blocks) * b <= max_len:
      return BlockLayout(width, width // b, blocks)
  k, blocks, _, _ = block.layout(np.array([n]), b, g)
  return BlockLayout(n, k, blocks)


def check(config, meta: dict | None, sampling: block.BlockSamplingConfig, n: int,
          lay: BlockLayout) -> None:
  """One-line ValueErrors: bad settings, a model or checkpoint the block
  sampler does not fit, an empty prompt (`block.generate` has none either),
  an n-token prompt whose canvas `lay` is too long."""
  sampling.validate()
  block.check_model(config, sampling, meta)
  if n < 1:
    raise ValueError(f'the block sampler needs a prompt of at least 1 token, got {n}.')
  b = sampling.block_length
  t = (lay.first_block + lay.blocks) * b
  if t > config.max_len:
    raise ValueError(f'prompt length {n} and gen_length {sampling.gen_length} need '
                     f'{t} positions (whole blocks of {b}), more than the model '
                     f'max_len {config.max_len}.')


def row_fns(config, sampling: block.BlockSamplingConfig, lay: BlockLayout):
  """(init, row) of one row. init(params, prompt [W], mask [W], seed [],
  knobs) -> carry: the walk's state before its first block (the PRNG key as
  raw data); row(params, prompt, mask, seed, knobs, carry, live []) -> (carry,
  answer tokens [G] (EOS after the length), answer tokens final so far [],
  done []). Prompts are left-padded to the layout's width W, `mask` marking the
  prompt; `knobs` (`BlockKnobs`, []) are the row's floats, `sampling` the
  program's settings (`program_part`)."""
  w, b, g = lay.width, sampling.block_length, sampling.gen_length

  def walk_of(params, prompt, mask, seed, knobs):
    n = jnp.sum(mask).astype(jnp.int32)
    right = prompt[(jnp.arange(w) + w - n) % w]  # Left-padded -> right-padded.
    shift, last = block.placement(n, lay.first_block, b, g)
    return block.walk(params, right[None], n[None], shift[None], last[None],
                      jax.random.key(seed), config=config, sc=sampling,
                      k0=lay.first_block, n_blocks=lay.blocks, knobs=knobs)

  raw = lambda s: {**s, 'key': jax.random.key_data(s['key'])}

  def init(params, prompt, mask, seed, knobs):
    return raw(walk_of(params, prompt, mask, seed, knobs).init())

  def row(params, prompt, mask, seed, knobs, carry, live):
    walk = walk_of(params, prompt, mask, seed, knobs)
    s = walk.run_block({**carry, 'key': jax.random.wrap_key_data(carry['key'])}, live)
    out, ready = walk.answer(s)
    return raw(s), out.tokens[0], ready[0], s['done'][0]

  return init, row


KNOBS = frozenset(f.name for f in dataclasses.fields(block.BlockSamplingConfig))


class BlockSampler(sampler.RowSampler):
  """`BlockSamplingConfig` requests (block-diffusion checkpoints): the prompt
  bucket is a `BlockLayout`, `steps` count per block, and a row is done at
  the end of the block where it produced EOS."""

  name = 'the block sampler'
  request_knobs = ('temperature', 'parallel', 'threshold', 'factor', 'threshold_rule',
                   'min_tokens', 'editing_threshold', 'minimal_topk', 'eos_early_stop')
  knobs_type = block.BlockKnobs

  def sampling_for(self, engine, default, gen_length, block_length, steps, knobs,
                   asked=None):
    wrong = sorted(set(knobs) - KNOBS)
    if wrong:
      raise ValueError(sampler.not_a_setting(wrong[0], self, KNOBS))
    return dataclasses.replace(default, gen_length=gen_length,
                               block_length=block_length or default.block_length,
                               steps=default.steps if steps is None else steps, **knobs)

  def resolve(self, engine, sampling):
    return canonical(sampling)

  def check(self, engine, sampling, n):
    check(engine.config, engine.meta, sampling, n, self.bucket(engine, sampling, n))

  def bucket(self, engine, sampling, n):
    return layout_for(n, sampling, engine.prompt_buckets, engine.config.max_len)

  def width(self, bucket):
    return bucket.width

  def num_blocks(self, sampling, bucket):
    return bucket.blocks

  def stack(self, samplings):
    return block.BlockKnobs.stack(samplings)

  def row_fns(self, engine, program, bucket):
    init, row = row_fns(engine.config, program, bucket)

    def step(params, prompt, mask, seed, knobs, carry, k):
      return row(params, prompt, mask, seed, knobs, carry, k < bucket.blocks)
    return init, step

  def finish(self, engine, program, bucket, carry, i, tokens, prompt_tokens):
    """The block sampler records no commit steps (-1)."""
    steps = np.full(len(tokens), -1, np.int32)
    nfe, decisions = jax.device_get((carry['nfe'], carry['decisions']))
    prefill = block.prefill_forwards(program, bucket.first_block)
    return engine.completion(tokens, steps, int(nfe[i]), prompt_tokens,
                             decisions=int(decisions[i, 0]), forwards=int(nfe[i]) + prefill)


SAMPLER = sampler.register(block.BlockSamplingConfig, BlockSampler())
