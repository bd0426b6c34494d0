r"""Samples completions from the latest checkpoint of a workdir.

  python -m launch.sample --workdir=/tmp/dllm --prompt='def ' --steps=64 \
      --gen_length=128 --block_length=32 --num_samples=2 --temperature=0.5
  python -m launch.sample --workdir=/tmp/dllm --parallel=threshold --cache=dual
"""

from absl import app, flags

from launch import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir written by launch.train.',
                               required=True)
_PROMPT = flags.DEFINE_string('prompt', None, 'Prompt text (default: the training '
                              "config's sample.prompt).")
_STEPS = flags.DEFINE_integer('steps', None, 'Denoising steps (all blocks together).')
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
_SEED = flags.DEFINE_integer('seed', 0, 'PRNG seed (sample i uses seed + i).')

# Bad values end the program at flag parsing, in one line, before any restore.
_positive = lambda v: v > 0
for _flag in (_STEPS, _GEN_LENGTH, _BLOCK_LENGTH, _NUM_SAMPLES):
  cli.check_flag(_flag, _positive, 'a positive integer')
cli.check_flag(_FACTOR, _positive, 'positive')
cli.check_flag(_TEMPERATURE, lambda v: v >= 0, '>= 0 (0 is greedy)')
cli.check_flag(_CFG_SCALE, lambda v: v >= 0, '>= 0')
cli.check_flag(_THRESHOLD, lambda v: 0 < v <= 1, 'in (0, 1]')
cli.check_divides(_BLOCK_LENGTH, _GEN_LENGTH)


def main(argv):
  cli.start(argv)
  import dataclasses  # pylint: disable=g-import-not-at-top
  from dllm_jax.serving import Engine, Request  # pylint: disable=g-import-not-at-top
  from dllm_jax import workdir as checkpoint  # pylint: disable=g-import-not-at-top
  with cli.one_line_errors():
    engine = Engine.from_workdir(_WORKDIR.value)
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
    sample_cfg = checkpoint.read_meta(_WORKDIR.value)['config']['sample']
    prompt = sample_cfg['prompt'] if _PROMPT.value is None else _PROMPT.value
    num = sample_cfg['num_samples'] if _NUM_SAMPLES.value is None else _NUM_SAMPLES.value
    chat = engine.chat if _CHAT.value is None else _CHAT.value
    # Sample i draws from seed + i: each sample is reproducible on its own.
    out = engine.generate([Request(prompt, sampling, seed=_SEED.value + i, chat=chat)
                           for i in range(num)])
  for i, c in enumerate(out):
    print(f'--- sample {i} ---\n{prompt}{c.text}', flush=True)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
