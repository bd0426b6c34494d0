"""The full-sequence sampler (`SamplingConfig`: LLaDA's semi-autoregressive
blocks over the whole canvas) as a `sampler.SamplerProgram`.

A row is `gen.row_walk` on a one-row canvas (its prompt left-padded to the
bucket): `row_fns` gives its first state and one block of its walk
(`loop.BlockWalk.run`, what `loop.run_all` runs in one `lax.scan`), and
`run` (`Engine.generate`) runs whole rows in one compiled call per
(settings, prompt bucket, batch size). A request alone equals
`dllm_jax.generate` on its prompt with `jax.random.key(seed)`.

The prefix cache recomputes the canvas from the current block to its end: a
window whose width depends on the block, static under jit, so its blocks
cannot be a traced per-row index: its rows step with one program per block
index (`static_blocks`; a batch runs one call per block index its rows are at).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.sampling import generate as gen
from dllm_jax.sampling import loop, proposers
from dllm_jax.serving import sampler
from dllm_jax.serving.records import Completion

KNOBS = frozenset(f.name for f in dataclasses.fields(gen.SamplingConfig))


class FullSequenceSampler(sampler.RowSampler):
  """`SamplingConfig` requests (masked-diffusion checkpoints)."""

  name = 'the full-sequence sampler'
  request_knobs = ('temperature', 'parallel', 'threshold', 'factor', 'cache',
                   'remasking', 'cfg_scale')
  knobs_type = gen.Knobs

  def sampling_for(self, engine, default, gen_length, block_length, steps, knobs,
                   asked=None):
    """Unset `block_length` is the default's when it divides `gen_length`, else
    `gen_length`; unset `steps` keeps the default's tokens per step (at least
    one step per block); `steps` given for `asked` tokens of a longer bucket
    `gen_length` keeps its tokens per step (a multiple of the blocks)."""
    wrong = sorted(set(knobs) - KNOBS)
    if wrong:
      raise ValueError(sampler.not_a_setting(wrong[0], self, KNOBS))
    d, g = default, gen_length
    bl = block_length or (d.block_length if g % d.block_length == 0 else g)
    n = g // bl if bl > 0 and g % bl == 0 else 0
    if steps is None and n:
      steps = max(n, -(-g * d.steps // d.gen_length // n) * n)
    elif steps is not None and n and asked and asked != g:
      steps = -(-steps * g // asked // n) * n
    return self.resolve(engine, dataclasses.replace(
        d, gen_length=g, block_length=bl, steps=g if steps is None else steps, **knobs))

  def resolve(self, engine, sampling):
    if sampling.mask_id is None:
      sampling = dataclasses.replace(sampling, mask_id=engine.config.ids.mask)
    return sampling

  def check(self, engine, sampling, n):
    gen.check_checkpoint(engine.meta)
    sampling.validate(n, engine.config.max_len)

  def stack(self, samplings):
    return gen.Knobs.stack(samplings)

  def static_blocks(self, sampling):
    return sampling.cache == 'prefix'

  def _walk_of(self, engine, program):
    config = engine.config
    proposer = proposers.build(program, config.ids.eos, config.ids.eot,
                               noised=program.temperature > 0)

    def walk_of(params, prompt, mask, seed, knobs):
      return gen.row_walk(params, prompt, mask, jax.random.key(seed), knobs,
                          config=config, sampling=program, proposer=proposer)
    return walk_of

  def row_fns(self, engine, program, bucket):
    """carry = (SamplerState of a one-row batch, the logits source's carry);
    a row at block >= the number of blocks is left as it is."""
    walk_of, p = self._walk_of(engine, program), bucket
    bl = program.block_length
    nb = program.gen_length // bl

    def init(params, prompt, mask, seed, knobs):
      return walk_of(params, prompt, mask, seed, knobs).init()

    def step(params, prompt, mask, seed, knobs, carry, block):
      walk = walk_of(params, prompt, mask, seed, knobs)
      if isinstance(block, int):  # Static (the prefix cache): rows at it step.
        carry = walk.run(carry, block)
        return carry, carry[0].tokens[0, p:], (block + 1) * bl, block + 1 >= nb
      new = walk.run(carry, jnp.minimum(block, nb - 1))
      carry = jax.tree.map(lambda x, y: jnp.where(block < nb, x, y), new, carry)
      return (carry, carry[0].tokens[0, p:], jnp.minimum(block + 1, nb) * bl,
              block + 1 >= nb)
    return init, step

  def finish(self, engine, program, bucket, carry, i, tokens, prompt_tokens):
    # Whole arrays to the host, then NumPy indexing (an eager jax index per row
    # would compile one program per row index).
    steps, nfe = jax.device_get((carry[0].commit_step, carry[0].nfe))
    steps = steps[i, 0, bucket:bucket + len(tokens)]
    return engine.completion(tokens, steps, int(nfe[i]), prompt_tokens)

  # --- whole rows in one call (Engine.generate) -----------------------------------

  def compiled_run(self, engine, program, prompt_len: int, batch: int):
    """The compiled (params, prompts [B, P], masks [B, P], seeds [B], knobs
    (`Knobs` [B])) -> (tokens [B, G], commit_step [B, G], nfe [B]); one per
    (program settings, prompt bucket, batch bucket)."""
    walk_of = self._walk_of(engine, program)

    def row(params, prompt, mask, seed, knobs):
      # A one-row run with its own key and floats: nothing couples rows.
      st = loop.run_all(walk_of(params, prompt, mask, seed, knobs), program)
      return st.tokens[0, prompt_len:], st.commit_step[0, prompt_len:], st.nfe

    def build():
      fn = jax.jit(jax.vmap(row, in_axes=(None, 0, 0, 0, 0)))
      shape = lambda dtype: jax.ShapeDtypeStruct((batch, prompt_len), dtype)
      rows = jax.ShapeDtypeStruct((batch,), jnp.float32)
      return fn.lower(engine.params, shape(jnp.int32), shape(jnp.bool_),
                      jax.ShapeDtypeStruct((batch,), jnp.uint32),
                      gen.Knobs(rows, rows, rows, rows)).compile()
    return engine.compile_once((program, prompt_len, batch), build)

  def run(self, engine, program, bucket, prompts, seeds, samplings) -> list[Completion]:
    """One batch in one call: rows padded to `bucket` tokens and to a compiled
    row count, each with its own settings' floats (one `program_part`)."""
    n, p = len(prompts), bucket
    b = engine.batch_bucket(n)
    spare = lambda rows: list(rows) + [rows[-1]] * (b - n)  # Spare rows: discarded.
    tokens, mask = gen.pad_prompts(spare(prompts), engine.config.ids.pad)
    extra = p - tokens.shape[1]
    tokens = np.pad(tokens, ((0, 0), (extra, 0)), constant_values=engine.config.ids.pad)
    mask = np.pad(mask, ((0, 0), (extra, 0)))
    fn = self.compiled_run(engine, program, p, b)
    out, steps, nfe = jax.device_get(fn(engine.params, tokens, mask,
                                        np.asarray(spare(seeds), np.uint32),
                                        self.stack(spare(samplings))))
    return [engine.completion(out[i], steps[i], int(nfe[i]), len(prompts[i]))
            for i in range(n)]

  def warmup(self, engine, sampling, n, b, stepped=True):
    if stepped:
      super().warmup(engine, sampling, n, b)
    else:
      self.compiled_run(engine, sampling.program_part(), self.bucket(engine, sampling, n),
                        engine.batch_bucket(min(b, engine.max_batch)))


SAMPLER = sampler.register(gen.SamplingConfig, FullSequenceSampler())
