r"""Samples completions from the latest checkpoint of a workdir.

  python -m launch.sample --workdir=/tmp/dllm --prompt='def ' --steps=64 \
      --gen_length=128 --block_length=32 --num_samples=2 --temperature=0.5
  python -m launch.sample --workdir=/tmp/dllm --parallel=threshold --cache=dual

A checkpoint trained with train.objective=block_diffusion goes to the block
sampler (sampling/block.py: exact KV cache, stops at EOS) with the block size it
was trained with; --steps then counts steps per block (default: the block size),
and the --block_* flags are its knobs. --sampler forces one sampler; each refuses
a checkpoint it does not fit in one line. A next-token checkpoint
(train.objective=next_token, a causal model) is decoded greedily token by token
(sampling/autoregressive.py). --steps may not exceed the positions to fill
(gen_length; per block: the block length).
"""

import math

from absl import app, flags

from launch import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir written by launch.train.',
                               required=True)
_PROMPT = flags.DEFINE_string('prompt', None, 'Prompt text (default: the training '
                              "config's sample.prompt).")
_SAMPLER = flags.DEFINE_enum('sampler', 'auto', ['auto', 'full', 'block'],
                             "auto: 'block' for a block_diffusion checkpoint, else "
                             "'full' (the full-sequence sampler).")
_STEPS = flags.DEFINE_integer('steps', None, 'Denoising steps: all blocks together '
                              '(full); per block (block sampler).')
_GEN_LENGTH = flags.DEFINE_integer('gen_length', None, 'Tokens to generate.')
_BLOCK_LENGTH = flags.DEFINE_integer(
    'block_length', None, 'Semi-autoregressive block length (divides gen_length).')
_TEMPERATURE = flags.DEFINE_float('temperature', None,
                                  'Gumbel-noise temperature; 0 is greedy.')
_CFG_SCALE = flags.DEFINE_float('cfg_scale', 0.0, 'Classifier-free guidance scale.')
_REMASKING = flags.DEFINE_enum('remasking', 'low_confidence',
                               ['low_confidence', 'random'], 'Which tokens stay masked.')
_LOGITS_EOS_INF = flags.DEFINE_bool('logits_eos_inf', False,
                                    'Never generate EOS (its logit is -inf).')
_CONF_EOS_EOT_INF = flags.DEFINE_bool(
    'confidence_eos_eot_inf', False,
    'Commit EOS / end-of-turn candidates last in their block.')
_PARALLEL = flags.DEFINE_enum('parallel', 'fixed', ['fixed', 'threshold', 'factor'],
                              'fixed: steps; threshold / factor: Fast-dLLM rules.')
_THRESHOLD = flags.DEFINE_float('threshold', 0.9, 'Confidence threshold (parallel='
                                'threshold).')
_FACTOR = flags.DEFINE_float('factor', 1.0, 'Factor (parallel=factor).')
_CACHE = flags.DEFINE_enum('cache', 'none', ['none', 'prefix', 'dual'],
                           'Block KV cache.')
_NOISE = flags.DEFINE_enum('noise', 'jax', ['jax', 'counter'],
                           "Randomness ('counter': the fused kernel on GPU).")
_CHAT = flags.DEFINE_bool('chat', None, 'Format the prompt as a user turn of the '
                          'SFT chat format (default: on for SFT checkpoints).')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', None, 'Completions to draw.')
_BLOCK_RULE = flags.DEFINE_enum('block_threshold_rule', 'llada2', ['llada2', 'dinfer'],
                                'Block sampler, parallel=threshold: whose rule.')
_BLOCK_CONF = flags.DEFINE_enum('block_confidence', 'tempered', ['tempered', 'plain'],
                                'Block sampler: rank candidates by softmax(logits / '
                                'temperature) (LLaDA2) or softmax(logits) (dInfer).')
_BLOCK_MIN = flags.DEFINE_integer('block_min_tokens', 0, 'Block sampler: > 0 commits '
                                  'at least this many per step (LLaDA2.1).')
_BLOCK_EDIT = flags.DEFINE_float('block_editing_threshold', 0.0, 'Block sampler: > 0 '
                                 'turns on LLaDA2.1 token editing.')
_BLOCK_POST = flags.DEFINE_integer('block_max_post_steps', 16, 'Block sampler: editing '
                                   'steps after a block has no masks.')
_BLOCK_CACHE = flags.DEFINE_bool('block_cache', True, 'Block sampler: the exact KV '
                                 'cache (off: recompute the canvas each step).')
_BLOCK_FUSE = flags.DEFINE_bool('block_fuse_write', False, "Block sampler: write a "
                                "finished block's keys/values in the next block's step.")
_BLOCK_TOPK = flags.DEFINE_integer('block_minimal_topk', 1, 'Block sampler: LLaDA2 '
                                   'minimal_topk, steps = min(steps, gen_length // it).')
_BLOCK_EOS_STOP = flags.DEFINE_bool('block_eos_early_stop', False, 'Block sampler: '
                                    "LLaDA2's eos_early_stop (see docs/block_diffusion.md).")
_BLOCK_ONLY = (_BLOCK_RULE, _BLOCK_CONF, _BLOCK_MIN, _BLOCK_EDIT, _BLOCK_POST,
               _BLOCK_CACHE, _BLOCK_FUSE, _BLOCK_TOPK, _BLOCK_EOS_STOP)
# Knobs of the full-sequence sampler alone: given with the block sampler, an error.
_FULL_ONLY = (_CFG_SCALE, _REMASKING, _LOGITS_EOS_INF, _CONF_EOS_EOT_INF, _CACHE, _NOISE)
_SEED = flags.DEFINE_integer('seed', 0, 'PRNG seed (sample i uses seed + i).')

# Bad values end the program at flag parsing, in one line, before any restore.
_positive = lambda v: v > 0
for _flag in (_STEPS, _GEN_LENGTH, _BLOCK_LENGTH, _NUM_SAMPLES, _BLOCK_TOPK):
  cli.check_flag(_flag, _positive, 'a positive integer')
for _flag in (_BLOCK_MIN, _BLOCK_POST, _BLOCK_EDIT):
  cli.check_flag(_flag, lambda v: 0 <= v < math.inf, '>= 0')
cli.check_flag(_FACTOR, lambda v: 0 < v < math.inf, 'positive and finite')
cli.check_flag(_TEMPERATURE, lambda v: 0 <= v < math.inf,
               '>= 0 and finite (0 is greedy)')
cli.check_flag(_CFG_SCALE, lambda v: 0 <= v < math.inf, '>= 0 and finite')
cli.check_flag(_THRESHOLD, lambda v: 0 < v <= 1, 'in (0, 1]')
cli.check_divides(_BLOCK_LENGTH, _GEN_LENGTH)


def _block_sampling(meta):
  """The block sampler's knobs: flags over the checkpoint's block size and sample
  settings."""
  from dllm_jax.sampling import block  # pylint: disable=g-import-not-at-top
  given = [f'--{f.name}' for f in _FULL_ONLY if flags.FLAGS[f.name].present]
  if given:
    raise ValueError(f'{", ".join(given)}: knobs of the full-sequence sampler; the '
                     'block sampler takes --parallel, --threshold, --factor, '
                     '--temperature and the --block_* flags.')
  train, s = meta['config']['train'], meta['config']['sample']
  size = train.get('block', {}).get('block_size', s['block_length'])
  b = size if _BLOCK_LENGTH.value is None else _BLOCK_LENGTH.value
  pick = lambda flag, default: default if flag.value is None else flag.value
  return block.BlockSamplingConfig(
      gen_length=pick(_GEN_LENGTH, s['gen_length']), block_length=b,
      steps=pick(_STEPS, b), parallel=_PARALLEL.value,
      threshold_rule=_BLOCK_RULE.value, threshold=_THRESHOLD.value,
      factor=_FACTOR.value, min_tokens=_BLOCK_MIN.value,
      temperature=pick(_TEMPERATURE, s['temperature']), confidence=_BLOCK_CONF.value,
      editing_threshold=_BLOCK_EDIT.value, max_post_steps=_BLOCK_POST.value,
      cache=_BLOCK_CACHE.value, fuse_write=_BLOCK_FUSE.value,
      minimal_topk=_BLOCK_TOPK.value, eos_early_stop=_BLOCK_EOS_STOP.value)


def _sample_block(meta, prompt: str, num: int,
                  chat: bool) -> tuple[list[str], list[tuple[int, int]]]:
  """Completions from the block sampler, sample i drawn from seed + i, and
  their forward counts (decided its tokens, all its run took)."""
  import jax  # pylint: disable=g-import-not-at-top
  from dllm_jax.sampling import block, text  # pylint: disable=g-import-not-at-top
  from dllm_jax.training import run_checks  # pylint: disable=g-import-not-at-top
  from dllm_jax.training import workdir as checkpoint  # pylint: disable=g-import-not-at-top
  sampling = _block_sampling(meta)
  sampling.validate()
  run_checks.check_steps(sampling)  # Steps per block: at most its positions.
  block.check_model(None, sampling, meta)  # Its objective, before restoring.
  config, params, tokenizer = checkpoint.restore_for_inference(_WORKDIR.value)
  block.check_model(config, sampling)
  runs = [text.sample_text_counts(params, config, tokenizer, prompt, sampling,
                                  jax.random.key(_SEED.value + i), 1, chat=chat)
          for i in range(num)]
  return [r[0][0] for r in runs], [(r[1][0], r[2]) for r in runs]


def _sample_full(meta, prompt: str, num: int,
                 chat) -> tuple[list[str], list[tuple[int, int]]]:
  """Completions from the full-sequence sampler (`Engine`), sample i drawn
  from seed + i, and their forward counts (decided its tokens, all)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from dllm_jax.sampling import generate as gen  # pylint: disable=g-import-not-at-top
  from dllm_jax.serving import Engine, Request  # pylint: disable=g-import-not-at-top
  gen.check_checkpoint(meta)  # A block-diffusion run, before restoring it.
  given = [f'--{f.name}' for f in _BLOCK_ONLY if flags.FLAGS[f.name].present]
  if given:
    raise ValueError(f'{", ".join(given)}: knobs of the block sampler, which runs '
                     'block_diffusion checkpoints (--sampler=block).')
  engine = Engine.from_workdir(_WORKDIR.value)  # Its generate refuses a block run.
  defaults = engine.default_sampling
  pick = lambda flag, name: getattr(defaults, name) if flag.value is None else flag.value
  sampling = dataclasses.replace(
      defaults, steps=pick(_STEPS, 'steps'), gen_length=pick(_GEN_LENGTH, 'gen_length'),
      block_length=pick(_BLOCK_LENGTH, 'block_length'),
      temperature=pick(_TEMPERATURE, 'temperature'), cfg_scale=_CFG_SCALE.value,
      remasking=_REMASKING.value, logits_eos_inf=_LOGITS_EOS_INF.value,
      confidence_eos_eot_inf=_CONF_EOS_EOT_INF.value, parallel=_PARALLEL.value,
      threshold=_THRESHOLD.value, factor=_FACTOR.value, cache=_CACHE.value,
      noise=_NOISE.value)
  if _STEPS.value is None:  # The checkpoint's steps, at most one per position.
    sampling = dataclasses.replace(sampling, steps=min(sampling.steps,
                                                       sampling.gen_length))
  from dllm_jax.training import run_checks  # pylint: disable=g-import-not-at-top
  run_checks.check_steps(sampling)  # At most one step per position to fill.
  chat = engine.chat if chat is None else chat
  out = engine.generate([Request(prompt, sampling, seed=_SEED.value + i, chat=chat)
                         for i in range(num)])
  return [c.text for c in out], [(c.decisions, c.forwards) for c in out]


def _sample_next_token(meta, prompt: str, num: int, chat: bool):
  """(greedy completions, forward counts) of a next-token (causal) checkpoint:
  one forward per token; the diffusion samplers' knobs do not apply and are
  refused."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dllm_jax.training import workdir as checkpoint  # pylint: disable=g-import-not-at-top
  from dllm_jax.data import sft  # pylint: disable=g-import-not-at-top
  from dllm_jax.sampling import autoregressive  # pylint: disable=g-import-not-at-top
  given = [f'--{f.name}' for f in (_SAMPLER, _STEPS, _BLOCK_LENGTH, _TEMPERATURE,
                                   _PARALLEL, _THRESHOLD, _FACTOR) + _FULL_ONLY +
           _BLOCK_ONLY if flags.FLAGS[f.name].present]
  if given:
    raise ValueError(f'{", ".join(given)}: knobs of the diffusion samplers; this '
                     'checkpoint was trained with train.objective=next_token and is '
                     'decoded greedily, one token at a time.')
  config, params, tokenizer = checkpoint.restore_for_inference(_WORKDIR.value)
  ids = (sft.prompt_ids(tokenizer, [{'role': 'user', 'content': prompt}]) if chat
         else tokenizer.encode(prompt, add_bos=True))
  gen_length = (meta['config']['sample']['gen_length'] if _GEN_LENGTH.value is None
                else _GEN_LENGTH.value)
  out = autoregressive.greedy(params, np.tile(ids, (num, 1)), config=config,
                              gen_length=gen_length)
  return ([tokenizer.decode(row[len(ids):]) for row in np.asarray(out)],
          [(gen_length, gen_length)] * num)


def main(argv):
  cli.start(argv)
  from dllm_jax.training import workdir as checkpoint  # pylint: disable=g-import-not-at-top
  with cli.one_line_errors():
    meta = checkpoint.read_meta(_WORKDIR.value)
    sample_cfg = meta['config']['sample']
    prompt = sample_cfg['prompt'] if _PROMPT.value is None else _PROMPT.value
    num = sample_cfg['num_samples'] if _NUM_SAMPLES.value is None else _NUM_SAMPLES.value
    sampler = _SAMPLER.value
    if sampler == 'auto':
      trained = meta['config']['train'].get('objective')
      sampler = 'block' if trained == 'block_diffusion' else 'full'
    if meta.get('model_config', {}).get('causal'):  # A next-token run: greedy.
      texts, counts = _sample_next_token(meta, prompt, num, bool(_CHAT.value))
    elif sampler == 'block':
      chat = (meta['config']['train'].get('objective') == 'sft'
              if _CHAT.value is None else _CHAT.value)
      texts, counts = _sample_block(meta, prompt, num, chat)
    else:
      texts, counts = _sample_full(meta, prompt, num, _CHAT.value)
  for i, (t, (decisions, forwards)) in enumerate(zip(texts, counts)):
    print(f'--- sample {i} ---\n{prompt}{t}', flush=True)
    print(f'[forwards: {decisions} decided tokens, {forwards} in all]', flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
