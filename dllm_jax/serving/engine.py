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
cached (at most `max_compiled`). A request's `max_tokens` cuts its answer
(`cut`); the server runs such a request at its length bucket (`gen_bucket`:
a power of two of whole blocks), so its programs are few.

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

The engine never asks which sampler it holds: it calls the settings' registered
`sampler.SamplerProgram` (`full_rows.FullSequenceSampler`,
`block_rows.BlockSampler`, or one a user registers), whose methods are the
only coupling to a sampler's internals.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dllm_jax import models
from dllm_jax.data import sft
from dllm_jax.models import ModelConfig
from dllm_jax.sampling import block
from dllm_jax.sampling import generate as gen
from dllm_jax.serving import block_rows, full_rows, loading, programs, sampler
from dllm_jax.serving.records import MAX_SEED, Completion, Request

# The sampler's buckets, widened for chat turns (16) and long prompts (8192).
PROMPT_BUCKETS = (16,) + gen.PROMPT_BUCKETS + (8192,)
MAX_COMPILED = 256  # Compiled programs an engine keeps (least recently used go).
# The built-in samplers' programs register on import (`sampler.register`).
_BUILT_IN = (full_rows.SAMPLER, block_rows.SAMPLER)

Sampling = gen.SamplingConfig | block.BlockSamplingConfig  # Or a registered sampler's.


def powers_of_two(limit: int) -> tuple[int, ...]:
  """1, 2, 4, ... up to `limit` (and `limit` itself)."""
  sizes = [1]
  while sizes[-1] * 2 < limit:
    sizes.append(sizes[-1] * 2)
  return tuple(sorted({*sizes, limit}))


class Engine:
  """Parameters, tokenizer, and a cache of compiled samplers by bucket."""

  # The block size of a checkpoint trained with the block objective (None:
  # masked diffusion); its likelihood is the block NELBO (likelihood.py).
  trained_block_size: int | None = None

  def __init__(self, params: models.Params, config: ModelConfig, tokenizer, *,
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
  def from_loaded(cls, loaded: loading.Loaded, **kwargs) -> Engine:
    """An engine running a loaded model (`loading.py`); `kwargs` override
    the defaults the checkpoint implies."""
    engine = cls(loaded.params, loaded.config, loaded.tokenizer,
                 **{**loaded.defaults, **kwargs})
    engine.meta, engine.trained_block_size = loaded.meta, loaded.trained_block_size
    return engine

  @classmethod
  def from_workdir(cls, workdir: str, *, step: int | None = None,
                   dtype: str | None = None, **kwargs) -> Engine:
    """`loading.from_workdir`: a training workdir's checkpoint with the run's
    sample settings as the default (a block-diffusion run: the block sampler)."""
    return cls.from_loaded(loading.from_workdir(workdir, step=step, dtype=dtype), **kwargs)

  @classmethod
  def from_hf_dir(cls, path: str, *, dtype: str | None = None, **kwargs) -> Engine:
    """`loading.from_hf_dir`: a local Hugging Face directory of any built-in
    family (`interop/hf_dir.py`)."""
    return cls.from_loaded(loading.from_hf_dir(path, dtype=dtype), **kwargs)

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

  def sampler(self, sampling: Sampling | None = None) -> sampler.SamplerProgram:
    """The program that serves these settings (default: the engine's)."""
    return sampler.of(self.default_sampling if sampling is None else sampling)

  def resolve(self, sampling: Sampling | None) -> Sampling:
    """The settings in their canonical form (`SamplerProgram.resolve`: the
    model's mask id filled in; block sampler: steps capped at the block
    length, `block_rows.canonical`)."""
    sampling = sampling or self.default_sampling
    return self.sampler(sampling).resolve(self, sampling)

  def sampling_for(self, gen_length: int | None = None, block_length: int | None = None,
                   steps: int | None = None, *, asked: int | None = None,
                   **knobs) -> Sampling:
    """The default settings with some changed (knobs left None keep theirs;
    `SamplerProgram.sampling_for`). Full-sequence sampler: unset
    `block_length` is the default's when it divides `gen_length`, else
    `gen_length`; unset `steps` keeps the default's tokens per step (at least
    one step per block). Block sampler: `steps` count per block. `asked`:
    the tokens the request asked for when `gen_length` is its bucket
    (`gen_bucket`). A knob the model's sampler does not have is a ValueError."""
    d = self.default_sampling
    g = d.gen_length if gen_length is None else gen_length
    knobs = {k: v for k, v in knobs.items() if v is not None}
    return self.resolve(self.sampler(d).sampling_for(self, d, g, block_length, steps, knobs,
                                                     asked=asked))

  def gen_bucket(self, tokens: int, block_length: int | None, n: int,
                 limit: int | None = None) -> int:
    """The generated length a request for `tokens` tokens after an n-token
    prompt runs with (`sampler.gen_bucket`: a power of two of whole blocks,
    at most `limit` and what fits the model; the answer is cut to `tokens`)."""
    bl = block_length or self.sampler().block_length(self.default_sampling)
    room = self.config.max_len - n
    room = room if limit is None else min(room, max(limit, tokens))
    return sampler.gen_bucket(tokens, bl, room) if bl > 0 else tokens

  def check_settings(self, sampling: Sampling, n: int) -> None:
    """Raises ValueError (one line) if these settings cannot run an n-token
    prompt on this model."""
    self.sampler(sampling).check(self, sampling, n)

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

  def bucket(self, n: int, sampling: Sampling):
    """The prompt bucket of an n-token prompt for these settings (an int, or
    the block sampler's `BlockLayout`)."""
    return self.sampler(sampling).bucket(self, sampling, n)

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

  def warmup(self, buckets: Sequence[tuple[Sampling | None, int, int]],
             stepped: bool = False) -> int:
    """Compiles (sampling, prompt length, batch size) buckets ahead, for
    `generate` (or, `stepped`, for the server's batcher); returns how many
    were new. Lengths and sizes are rounded up to their buckets."""
    before = self.programs.compiles
    for sampling, n, b in buckets:
      sampling = self.resolve(sampling)
      self.check_settings(sampling, n)
      self.sampler(sampling).warmup(self, sampling, n, b, stepped=stepped)
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
    rows, limits = [], []
    for i, r in enumerate(requests):
      r = r if isinstance(r, Request) else Request(r, self.default_sampling,
                                                   chat=self.chat)
      ids, sampling = self.encode(r.prompt, r.chat), self.resolve(r.sampling)
      try:
        self.check(ids, sampling, r.seed)
      except ValueError as e:
        raise ValueError(f'request {i}: {e}') from None
      rows.append((ids, sampling, r.seed))
      limits.append(r.max_tokens)
    groups: dict = {}
    for i, (ids, sampling, _) in enumerate(rows):
      groups.setdefault(self.group_key(sampling, len(ids)), []).append(i)
    out: list[Completion | None] = [None] * len(rows)
    for (program, p), members in groups.items():
      for c in range(0, len(members), self.max_batch):
        chunk = members[c:c + self.max_batch]
        prompts, samplings, seeds = zip(*[rows[i] for i in chunk])
        results = self.sampler(program).run(self, program, p, prompts, seeds, samplings)
        for i, res in zip(chunk, results):
          out[i] = self.cut(res, limits[i])
    return out

  def cut(self, done: Completion, max_tokens: int | None) -> Completion:
    """The completion cut to its request's `max_tokens` (the rest of its
    length bucket dropped; finish_reason 'stop' only if the cut answer ends)."""
    if max_tokens is None or len(done.tokens) <= max_tokens:
      return done
    return self.completion(done.tokens[:max_tokens], done.commit_step[:max_tokens],
                           done.nfe, done.prompt_tokens, done.decisions, done.forwards)

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
