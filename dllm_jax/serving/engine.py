"""The inference engine: parameters, tokenizer and compiled samplers in one place.

  engine = Engine.from_workdir('/tmp/dllm')          # or Engine.from_hf_dir(DIR)
  engine.warmup([(SamplingConfig(...), 32, 8)])      # compile ahead (optional)
  out = engine.generate([Request('def ', sampling, seed=1), Request([257, 100], ...)])
  out[0].text, out[0].tokens                         # one Completion per request

Requests of different lengths and settings are grouped by their program
settings (`program_part()`: the settings but for the values of the floats
such as temperature and threshold, which travel one per row) and their
prompt-length bucket (left-padded to the bucket with a prompt mask), and each
group runs as batches whose size is rounded up to a power of two; every
(program settings, prompt bucket, batch bucket) triple is compiled once and
cached (at most `max_compiled`).

Batch invariance: each row runs the sampler on its own, with its own PRNG key
`jax.random.key(seed)` (`jax.vmap` over rows of a one-row sampler call), so a
request's answer does not depend on what else shares its batch: the same
request alone, or in any batch, with the same seed gives the same tokens (at
any temperature; up to float rounding of batched matmuls, which greedy ties
could in principle expose). A request alone equals `dllm_jax.generate` on its
prompt with `jax.random.key(seed)`.

Block-diffusion checkpoints (trained with objective block_diffusion) are
served by the block sampler (`sampling/block.py`): their settings are a
`BlockSamplingConfig` (`steps` per block, the trained block size), a prompt
bucket is a `BlockLayout`, and `generate` steps their rows block by block
(`stepper.run`, the server's path): a row stops at the end of the block where
it produced EOS, its `tokens` end there (EOS included), and a request alone
equals `block.generate` on its prompt with `jax.random.key(seed)`.

The coupling to the sampler's internals lives in `_row_sampler`, `group_key`
and `stepper._row_fn` / `block_rows.row_fns` (the server's block-by-block
rows) alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax import model as model_lib
from dllm_jax.data import sft
from dllm_jax.presets import ModelConfig
from dllm_jax.sampling import block
from dllm_jax.sampling import generate as gen
from dllm_jax.sampling import loop, proposers
from dllm_jax.serving import block_rows, programs
from dllm_jax.serving.block_rows import BlockLayout

PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
MAX_SEED = 2**32 - 1
MAX_COMPILED = 256  # Compiled programs an engine keeps (least recently used go).


Sampling = gen.SamplingConfig | block.BlockSamplingConfig
_FULL_KNOBS = frozenset(f.name for f in dataclasses.fields(gen.SamplingConfig))
_BLOCK_KNOBS = frozenset(f.name for f in dataclasses.fields(block.BlockSamplingConfig))


def not_a_setting(name: str, blocks: bool, known) -> str:
  """The one-line refusal of a setting the model's sampler does not have."""
  return (f'{name} is not a setting of the {"block" if blocks else "full-sequence"} '
          f'sampler that serves this {"block-diffusion " if blocks else ""}model; '
          f'its settings: {", ".join(sorted(known))}.')


@dataclasses.dataclass(frozen=True)
class Request:
  """One generation request.

  Attributes:
    prompt: text (encoded after a BOS token, or as a user turn of the chat
      format when `chat`), or token ids [P] used as given.
    sampling: the sampler knobs (`gen_length` is the number of new tokens); a
      `BlockSamplingConfig` for a block-diffusion model; None: the engine's
      defaults.
    seed: the row's PRNG seed in [0, 2**32): same seed, same answer.
    chat: render a text prompt with the tokenizer's chat template.
  """
  prompt: str | Sequence[int] | np.ndarray
  sampling: Sampling | None = None
  seed: int = 0
  chat: bool = False


@dataclasses.dataclass
class Completion:
  """One request's answer: `tokens` [G] (and the step that committed each, [G];
  -1 from the block sampler), decoded `text` (up to EOS / end-of-turn), the
  model evaluations its row took (`nfe`; `decisions` those that decided its
  tokens, the reference's count; `forwards` all, with the block sampler's cache
  prefill and block writes), and `finish_reason` ('stop' when the model
  ended the answer, else 'length'). G is gen_length, fewer where the block
  sampler stopped at EOS (EOS included) or a stop sequence ended the row (more,
  up to the last block's end, where LLaDA2.0's eos_early_stop ended it at an
  EOS past gen_length, as the reference does)."""
  tokens: np.ndarray
  commit_step: np.ndarray
  text: str
  nfe: int
  prompt_tokens: int
  finish_reason: str
  decisions: int = -1
  forwards: int = -1


def powers_of_two(limit: int) -> tuple[int, ...]:
  """1, 2, 4, ... up to `limit` (and `limit` itself)."""
  sizes = [1]
  while sizes[-1] * 2 < limit:
    sizes.append(sizes[-1] * 2)
  return tuple(sorted({*sizes, limit}))


class Engine:
  """Parameters, tokenizer, and a cache of compiled samplers by bucket."""

  def __init__(self, params: model_lib.Params, config: ModelConfig, tokenizer, *,
               default_sampling: Sampling | None = None, chat: bool = False,
               max_batch: int = 64, batch_sizes: Sequence[int] | None = None,
               prompt_buckets: Sequence[int] = PROMPT_BUCKETS, name: str = 'dllm_jax',
               max_compiled: int = MAX_COMPILED):
    """Args: `default_sampling` for requests that bring none, `chat` whether
    text prompts default to the chat format (SFT checkpoints), `max_batch` the
    largest batch one compiled call runs, `batch_sizes` the compiled batch
    sizes (a batch is padded up to the next; default powers of two up to
    `max_batch`), `name` the model's name (server), `max_compiled` how many
    compiled programs are kept (past that the least recently used is dropped
    and compiles again when asked for: distinct settings cannot grow memory
    without bound)."""
    self.params, self.config, self.tokenizer = params, config, tokenizer
    self.default_sampling = default_sampling or gen.SamplingConfig()
    self.chat, self.name = chat, name
    self.batch_sizes = tuple(sorted(batch_sizes or powers_of_two(max_batch)))
    self.max_batch = self.batch_sizes[-1]
    self.prompt_buckets = tuple(sorted(prompt_buckets))
    self.programs = programs.Programs(max_compiled)
    self.meta = None  # The checkpoint's meta (`from_workdir`): which sampler fits.

  @classmethod
  def from_workdir(cls, workdir: str, *, step: int | None = None,
                   dtype: str | None = None, **kwargs) -> Engine:
    """The latest (or given) checkpoint of a training workdir (Orbax); the
    run's sample settings become the default, and SFT runs default to chat. A
    block-diffusion run gets the block sampler with the block size it was
    trained with, one step per token (as `launch.sample`)."""
    from dllm_jax import workdir as checkpoint  # pylint: disable=g-import-not-at-top
    config, params, tokenizer = checkpoint.restore_for_inference(
        workdir, step=step, dtype=dtype)
    meta = checkpoint.read_meta(workdir, step)
    s = meta['config']['sample']
    if meta['config']['train'].get('objective') == 'block_diffusion':
      defaults = block_rows.defaults(meta)
    else:
      defaults = gen.SamplingConfig(steps=s['steps'], gen_length=s['gen_length'],
                                    block_length=s['block_length'],
                                    temperature=s['temperature'])
    kwargs.setdefault('default_sampling', defaults)
    kwargs.setdefault('chat', meta['config']['train']['objective'] == 'sft')
    kwargs.setdefault('name', os.path.basename(os.path.abspath(workdir)))
    engine = cls(params, config, tokenizer, **kwargs)
    engine.meta = meta
    return engine

  @classmethod
  def from_hf_dir(cls, path: str, *, dtype: str | None = None, **kwargs) -> Engine:
    """A local Hugging Face directory (config.json, safetensors, tokenizer.json);
    the family is picked from its config.json: LLaDA-MoE and LLaDA2 through
    `interop/moe_hf.py`, dense LLaDA otherwise. Chat defaults on when the
    tokenizer has a template."""
    from dllm_jax.interop import moe_hf  # pylint: disable=g-import-not-at-top
    file = os.path.join(path, 'config.json')
    if not os.path.isfile(file):
      raise FileNotFoundError(f'no config.json in {path!r}.')
    with open(file) as f:
      hf_config = json.load(f)
    if 'llada2' in str(hf_config.get('model_type', '')) or 'num_experts' in hf_config:
      tokenizer = moe_hf.tokenizer(path)
      overrides = {} if dtype is None else dict(dtype=dtype, param_dtype=dtype)
      config, params = moe_hf.load(path, **overrides)
    else:
      from dllm_jax.data.hf_tokenizer import HFTokenizer  # pylint: disable=g-import-not-at-top
      from dllm_jax.interop import llada_hf  # pylint: disable=g-import-not-at-top
      tokenizer = HFTokenizer(path)
      config = llada_hf.model_config(path, tokenizer, dtype)
      params = llada_hf.load_params(path, config)
    kwargs.setdefault('chat', bool(getattr(tokenizer, 'chat_template', None)))
    kwargs.setdefault('name', os.path.basename(os.path.abspath(path)))
    return cls(params, config, tokenizer, **kwargs)

  # --- requests -> rows ---------------------------------------------------------

  def encode(self, prompt: str | Sequence[int] | np.ndarray,
             chat: bool = False) -> np.ndarray:
    """Prompt ids [P]: text after BOS, or as a user turn (chat), or ids as given."""
    if isinstance(prompt, str):
      if chat:
        return sft.prompt_ids(self.tokenizer, [{'role': 'user', 'content': prompt}])
      return self.tokenizer.encode(prompt, add_bos=True)
    return np.asarray(prompt, np.int32).reshape(-1)

  def encode_chat(self, messages: list[dict]) -> np.ndarray:
    """Prompt ids [P] of a conversation, up to where the assistant answers."""
    return sft.prompt_ids(self.tokenizer, messages)

  def resolve(self, sampling: Sampling | None) -> Sampling:
    """The knobs with the model's mask id filled in (block sampler: steps
    capped at the block length, `block_rows.canonical`)."""
    sampling = sampling or self.default_sampling
    if isinstance(sampling, block.BlockSamplingConfig):
      return block_rows.canonical(sampling)
    if sampling.mask_id is None:
      sampling = dataclasses.replace(sampling, mask_id=self.config.ids.mask)
    return sampling

  def sampling_for(self, gen_length: int | None = None, block_length: int | None = None,
                   steps: int | None = None, **knobs) -> Sampling:
    """The default settings with some changed (knobs left None keep theirs).
    Full-sequence sampler: unset `block_length` is the default's when it
    divides `gen_length`, else `gen_length`; unset `steps` keeps the default's
    tokens per step (at least one step per block). Block sampler: `steps` count
    per block. A knob the model's sampler does not have is a ValueError."""
    d = self.default_sampling
    g = d.gen_length if gen_length is None else gen_length
    knobs = {k: v for k, v in knobs.items() if v is not None}
    blocks = isinstance(d, block.BlockSamplingConfig)
    known = _BLOCK_KNOBS if blocks else _FULL_KNOBS
    wrong = sorted(set(knobs) - known)
    if wrong:
      raise ValueError(not_a_setting(wrong[0], blocks, known))
    if blocks:
      return dataclasses.replace(d, gen_length=g, block_length=block_length or d.block_length,
                                 steps=d.steps if steps is None else steps, **knobs)
    bl = block_length or (d.block_length if g % d.block_length == 0 else g)
    if steps is None and bl > 0 and g % bl == 0:
      n = g // bl
      steps = max(n, -(-g * d.steps // d.gen_length // n) * n)
    return self.resolve(dataclasses.replace(d, gen_length=g, block_length=bl,
                                            steps=g if steps is None else steps, **knobs))

  def check_settings(self, sampling: Sampling, n: int) -> None:
    """Raises ValueError (one line) if these settings cannot run an n-token
    prompt on this model."""
    if isinstance(sampling, gen.SamplingConfig):
      gen.check_checkpoint(self.meta)
      sampling.validate(n, self.config.max_len)
      return
    block_rows.check(self.config, self.meta, sampling, n, self.bucket(n, sampling))

  def check(self, ids: np.ndarray, sampling: Sampling, seed: int) -> None:
    """Raises ValueError (one line) if the request cannot run."""
    self.check_settings(sampling, len(ids))
    if not 0 <= seed <= MAX_SEED:
      raise ValueError(f'seed must be in [0, {MAX_SEED}], got {seed}.')
    mask = self.config.ids.mask
    if np.any(ids == mask):
      raise ValueError(f'the prompt contains the mask token (id {mask}).')
    if np.any((ids < 0) | (ids >= self.config.vocab_size)):
      raise ValueError(f'prompt ids must be in [0, {self.config.vocab_size}).')

  def prompt_bucket(self, n: int, gen_length: int) -> int:
    """The padded prompt length of an n-token prompt: the smallest bucket >= n
    that fits the model with the answer (else the largest that does)."""
    room = self.config.max_len - gen_length
    fits = [b for b in self.prompt_buckets if n <= b <= room]
    return fits[0] if fits else max(n, room)

  def bucket(self, n: int, sampling: Sampling) -> int | BlockLayout:
    """The prompt bucket of an n-token prompt for these settings."""
    if isinstance(sampling, block.BlockSamplingConfig):
      return block_rows.layout_for(n, sampling, self.prompt_buckets, self.config.max_len)
    return self.prompt_bucket(n, sampling.gen_length)

  def batch_bucket(self, n: int) -> int:
    """The compiled batch size an n-row batch (n <= max_batch) is padded to."""
    return next(b for b in self.batch_sizes if b >= n)

  def group_key(self, sampling: Sampling, n: int):
    """Requests with equal keys share one compiled call: (the program's
    settings, `program_part`: the floats' values leave it, travelling one per
    row; the prompt bucket)."""
    return sampling.program_part(), self.bucket(n, sampling)

  # --- compiled samplers -------------------------------------------------------

  def compile_once(self, key, build):
    """The compiled function cached under `key`, built by `build()` unless
    it is among the `max_compiled` most recently used (`programs`)."""
    return self.programs.get(key, build)

  def _row_sampler(self, program: gen.SamplingConfig, prompt_len: int, batch: int):
    """The compiled (params, prompts [B, P], masks [B, P], seeds [B], knobs
    (`Knobs` [B])) -> (tokens [B, G], commit_step [B, G], nfe [B]); one per
    (program settings, prompt bucket, batch bucket)."""
    ids = self.config.ids
    proposer = proposers.build(program, ids.eos, ids.eot, noised=program.temperature > 0)

    def row(params, prompt, mask, seed, knobs):
      # A one-row run with its own key and floats: nothing couples rows.
      st = loop.run_all(gen.row_walk(params, prompt, mask, jax.random.key(seed), knobs,
                                     config=self.config, sampling=program,
                                     proposer=proposer), program)
      return st.tokens[0, prompt_len:], st.commit_step[0, prompt_len:], st.nfe

    def build():
      fn = jax.jit(jax.vmap(row, in_axes=(None, 0, 0, 0, 0)))
      shape = lambda dtype: jax.ShapeDtypeStruct((batch, prompt_len), dtype)
      rows = jax.ShapeDtypeStruct((batch,), jnp.float32)
      return fn.lower(self.params, shape(jnp.int32), shape(jnp.bool_),
                      jax.ShapeDtypeStruct((batch,), jnp.uint32),
                      gen.Knobs(rows, rows, rows, rows)).compile()
    return self.compile_once((program, prompt_len, batch), build)

  def warmup(self, buckets: Sequence[tuple[Sampling | None, int, int]]) -> int:
    """Compiles (sampling, prompt length, batch size) buckets ahead; returns how
    many were new. Lengths and sizes are rounded up to their buckets."""
    from dllm_jax.serving import stepper  # pylint: disable=g-import-not-at-top
    before = self.programs.compiles
    for sampling, n, b in buckets:
      sampling = self.resolve(sampling)
      self.check_settings(sampling, n)
      if isinstance(sampling, block.BlockSamplingConfig):
        stepper.warmup(self, sampling, n, b)
        continue
      self._row_sampler(sampling.program_part(),
                        self.prompt_bucket(n, sampling.gen_length),
                        self.batch_bucket(min(b, self.max_batch)))
    return self.programs.compiles - before

  @property
  def num_compiled(self) -> int:
    return len(self.programs)

  # --- generation --------------------------------------------------------------

  def generate(self, requests: Sequence[Request | str | Sequence[int]]) -> list[Completion]:
    """Answers every request (in order); see the module docstring for batching.

    Raises:
      ValueError: a request cannot run (its index and why), e.g. full-sequence
        settings for a block-diffusion checkpoint (`gen.check_checkpoint`).
    """
    rows = []
    for i, r in enumerate(requests):
      r = r if isinstance(r, Request) else Request(r, self.default_sampling,
                                                   chat=self.chat)
      ids, sampling = self.encode(r.prompt, r.chat), self.resolve(r.sampling)
      try:
        self.check(ids, sampling, r.seed)
      except ValueError as e:
        raise ValueError(f'request {i}: {e}') from None
      rows.append((ids, sampling, r.seed))
    groups: dict = {}
    for i, (ids, sampling, _) in enumerate(rows):
      groups.setdefault(self.group_key(sampling, len(ids)), []).append(i)
    out: list[Completion | None] = [None] * len(rows)
    for (program, p), members in groups.items():
      for c in range(0, len(members), self.max_batch):
        chunk = members[c:c + self.max_batch]
        run = (self._run if isinstance(program, gen.SamplingConfig) else
               self._run_blocks)
        results = run(program, p, *zip(*[rows[i] for i in chunk]))
        for i, res in zip(chunk, results):
          out[i] = res
    return out

  def _run(self, program: gen.SamplingConfig, p: int, prompts: Sequence[np.ndarray],
           samplings: Sequence[gen.SamplingConfig],
           seeds: Sequence[int]) -> list[Completion]:
    """One batch: rows padded to `p` tokens and to a power-of-two row count,
    each with its own settings' floats (one `program_part`)."""
    n = len(prompts)
    b = self.batch_bucket(n)
    spare = lambda rows: list(rows) + [rows[-1]] * (b - n)  # Spare rows: discarded.
    padded = spare(prompts)
    tokens, mask = gen.pad_prompts(padded, self.config.ids.pad)
    extra = p - tokens.shape[1]
    tokens = np.pad(tokens, ((0, 0), (extra, 0)), constant_values=self.config.ids.pad)
    mask = np.pad(mask, ((0, 0), (extra, 0)))
    seeds = np.asarray(spare(seeds), np.uint32)
    fn = self._row_sampler(program, p, b)
    out, steps, nfe = jax.device_get(fn(self.params, tokens, mask, seeds,
                                        gen.Knobs.stack(spare(samplings))))
    return [self.completion(out[i], steps[i], int(nfe[i]), len(prompts[i]))
            for i in range(n)]

  def _run_blocks(self, program: block.BlockSamplingConfig, p: BlockLayout,
                  prompts: Sequence[np.ndarray],
                  samplings: Sequence[block.BlockSamplingConfig],
                  seeds: Sequence[int]) -> list[Completion]:
    """One batch of the block sampler, stepped block by block (`stepper.run`)."""
    from dllm_jax.serving import stepper  # pylint: disable=g-import-not-at-top
    return stepper.run(self, program, p, prompts, seeds, samplings)

  def completion(self, tokens: np.ndarray, commit_step: np.ndarray, nfe: int,
                 prompt_tokens: int, decisions: int | None = None,
                 forwards: int | None = None) -> Completion:
    """A row's `Completion` from its answer tokens [G] and commit steps [G];
    `decisions` and `forwards` default to `nfe` (the full-sequence sampler,
    whose every forward of a one-row walk decides and refreshes in one)."""
    ends = (self.config.ids.eos, self.config.ids.eot)  # The sampler's own ids.
    return Completion(tokens=tokens, commit_step=commit_step,
                      text=self.tokenizer.decode(tokens), nfe=nfe,
                      prompt_tokens=prompt_tokens,
                      finish_reason='stop' if np.isin(tokens, ends).any() else 'length',
                      decisions=nfe if decisions is None else decisions,
                      forwards=nfe if forwards is None else forwards)
