"""lm-evaluation-harness model `dllm_jax`.

  python -m launch.lm_eval --model dllm_jax --model_args workdir=DIR,mc_num=128 --tasks arc_challenge
  lm_eval.simple_evaluate(model='dllm_jax', model_args={'workdir': DIR}, ...)

Importing this module registers the class (`python -m launch.lm_eval`, its
console script `dllm-lm-eval`, or an `import dllm_jax.evaluation.harness` before
`simple_evaluate`). An installed dllm_jax also declares it in lm-eval's plugin
entry-point group `lm_eval.models` (setup.py), which lm-eval releases that read
plugins resolve lazily, without an import of ours.

`loglikelihood` is LLaDA's Monte Carlo ELBO (`dllm_jax.evaluation.likelihood`, `mc_num`
samples in batches of `mc_batch_size`, guidance `cfg_scale`), or for a
checkpoint trained with the block objective the block NELBO it was trained on
(`dllm_jax.evaluation.block_likelihood`; no guidance: cfg_scale > 0 is refused); the context is
encoded after a BOS token and the continuation on its own, as `launch.eval`
does, and the ELBO's key is `fold_in(key(seed), doc_id)`, so the numbers equal
`launch.eval --mode=choice` on the same data. `is_greedy` is always False (a
diffusion LM has no cheap greedy check). `loglikelihood_rolling` sums the ELBO
over disjoint windows of the model length. `generate_until` runs the Engine
(row seed `seed + doc_id`; a block-diffusion checkpoint's block sampler), cutting
the answer at the first stop sequence.
"""

from __future__ import annotations

import jax
# lm-eval loads its own model table only while its registry is empty, so it
# must be loaded before `register_model` below fills the registry.
import lm_eval.models  # pylint: disable=unused-import
import numpy as np
from lm_eval import utils as lm_utils
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from dllm_jax.evaluation import likelihood
from dllm_jax.sampling.block import BlockSamplingConfig
from dllm_jax.serving.engine import Engine, Request
from dllm_jax.serving.server import apply_stop


@register_model('dllm_jax')
class DllmJaxLM(LM):
  """A dllm_jax checkpoint (`workdir=`) or Hugging Face directory (`hf_dir=`:
  any built-in family, or a `launch.export` output)."""

  def __init__(self, workdir: str | None = None, hf_dir: str | None = None,
               mc_num: int = 128, mc_batch_size: int = 16, cfg_scale: float = 0.0,
               seed: int = 0, gen_length: int | None = None, steps: int | None = None,
               block_length: int | None = None, temperature: float = 0.0,
               dtype: str | None = None, batch_size: int | str | None = None,
               max_batch_size: int | None = None, device: str | None = None, **kwargs):
    super().__init__()
    del max_batch_size, device  # The harness passes these to every model.
    if kwargs:
      raise ValueError(f'unknown dllm_jax model_args {sorted(kwargs)}.')
    if bool(workdir) == bool(hf_dir):
      raise ValueError('give exactly one of workdir= and hf_dir= in --model_args.')
    batch = int(batch_size) if str(batch_size or '').isdigit() else 32
    self.engine = (Engine.from_workdir(workdir, dtype=dtype, max_batch=batch) if workdir
                   else Engine.from_hf_dir(hf_dir, dtype=dtype, max_batch=batch))
    # A block-diffusion checkpoint's likelihood is the block NELBO it was
    # trained on (block_likelihood.py), not the bidirectional ELBO.
    self.opts = dict(config=self.engine.config, mc_num=int(mc_num),
                     batch_size=int(mc_batch_size), cfg_scale=float(cfg_scale),
                     block_size=self.engine.trained_block_size)
    likelihood.check_block_options(self.engine.trained_block_size, float(cfg_scale))
    self.seed = int(seed)
    as_int = lambda v: None if v is None else int(v)
    # The block sampler (block-diffusion checkpoints) has no guidance knob.
    guide = {} if isinstance(self.engine.default_sampling, BlockSamplingConfig) else {
        'cfg_scale': float(cfg_scale)}
    self.sampling = self.engine.sampling_for(
        as_int(gen_length), as_int(block_length), as_int(steps),
        temperature=float(temperature), **guide)

  def _key(self, request) -> jax.Array:
    return jax.random.fold_in(jax.random.key(self.seed), request.doc_id or 0)

  def _ll(self, prompt, answer, key) -> float:
    return likelihood.log_likelihood(self.engine.params, prompt, answer, key, **self.opts)

  def loglikelihood(self, requests, disable_tqdm: bool = False):
    """[(context, continuation)] -> [(ELBO of the continuation, False)]."""
    tok = self.engine.tokenizer
    return [(self._ll(tok.encode(ctx, add_bos=True), tok.encode(cont), self._key(r)),
             False) for r in requests for ctx, cont in [r.args]]

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
    """[(text,)] -> [ELBO of the text], summed over windows of the model length."""
    tok, out = self.engine.tokenizer, []
    for r in requests:
      ids = [int(i) for i in tok.encode(r.args[0])]
      windows = lm_utils.get_rolling_token_windows(
          ids, prefix_token=tok.bos_id, max_seq_len=self.engine.config.max_len - 1,
          context_len=1)  # A window is its context token and max_len - 1 more.
      total = 0.0
      for j, (ctx, cont) in enumerate(map(lm_utils.make_disjoint_window, windows)):
        total += self._ll(ctx, cont, jax.random.fold_in(self._key(r), j))
      out.append(total)
    return out

  def generate_until(self, requests, disable_tqdm: bool = False):
    """[(context, {'until': [...], 'max_gen_toks': n, ...})] -> [answer]."""
    reqs, stops = [], []
    room = self.engine.config.max_len - self.sampling.gen_length
    for r in requests:
      ctx, kwargs = r.args
      ids = self.engine.encode(ctx)
      if len(ids) > room:  # Keep the end of a long few-shot context (after BOS).
        ids = np.concatenate([ids[:1], ids[len(ids) - room + 1:]])
      until = kwargs.get('until') or []
      stops.append([until] if isinstance(until, str) else list(until))
      reqs.append(Request(ids, self.sampling, seed=(self.seed + (r.doc_id or 0))
                          % 2**32))
    done = self.engine.generate(reqs)
    return [apply_stop(c.text, s)[0] for c, s in zip(done, stops)]

