r"""Likelihood evaluation of a checkpoint (LLaDA's Monte Carlo ELBO; for a checkpoint
trained with the block objective, the block NELBO it was trained on:
dllm_jax/evaluation/block_likelihood.py); prints tables.

  # Per-token negative ELBO on held-out rows of the built-in corpus:
  python -m launch.eval --workdir=/tmp/dllm --mode=heldout --num_rows=16
  # Log-likelihood of each {"prompt": ..., "answer": ...} line:
  python -m launch.eval --workdir=/tmp/dllm --mode=pairs --data=pairs.jsonl
  # Multiple choice by likelihood, {"prompt": ..., "choices": [...], "label": i}:
  python -m launch.eval --workdir=/tmp/dllm --mode=choice --data=mc.jsonl
  # Exact match of sampled answers, {"prompt": ..., "answer": ...}, cut at --until:
  python -m launch.eval --workdir=/tmp/dllm --mode=generate --data=qa.jsonl \
      --gen_length=32 --until='\n'

Prompts are encoded after a BOS token, as training documents start. Example i
uses the key fold_in(key(seed), i) (choice) or seed + i (generate): the same
numbers as the lm-evaluation-harness model `dllm_jax` on the same data.
"""

import json
import math
import os
import time

from absl import app, flags

from launch import cli

MODES = ('heldout', 'pairs', 'choice', 'generate')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir written by launch.train.',
                               required=True)
_MODE = flags.DEFINE_enum('mode', 'heldout', MODES, 'What to evaluate.')
_DATA = flags.DEFINE_string('data', None, 'JSONL file (pairs and choice modes).')
_NUM_ROWS = flags.DEFINE_integer('num_rows', 16, 'Held-out rows (heldout mode).')
_MC_NUM = flags.DEFINE_integer('mc_num', 128, 'Monte Carlo samples per sequence.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Monte Carlo batch size.')
_CFG_SCALE = flags.DEFINE_float('cfg_scale', 0.0, 'Classifier-free guidance scale.')
_SEED = flags.DEFINE_integer('seed', 0, 'PRNG seed.')
_GEN_LENGTH = flags.DEFINE_integer('gen_length', None, 'Generated tokens (generate '
                                   "mode; default: the run's sample settings).")
_STEPS = flags.DEFINE_integer('steps', None, 'Denoising steps (generate mode).')
_BLOCK_LENGTH = flags.DEFINE_integer('block_length', None, 'Block length (generate).')
_TEMPERATURE = flags.DEFINE_float('temperature', 0.0, 'Temperature (generate mode).')
_UNTIL = flags.DEFINE_multi_string('until', [], 'Stop sequences (generate mode; '
                                   'backslash escapes such as \\n are decoded).')

# Bad values end the program at flag parsing, in one line, before any restore.
for _flag in (_NUM_ROWS, _MC_NUM, _BATCH_SIZE):
  cli.check_flag(_flag, lambda v: v > 0, 'a positive integer')
cli.check_flag(_CFG_SCALE, lambda v: v >= 0, '>= 0')
cli.check_divides(_BATCH_SIZE, _MC_NUM)


def _read_jsonl(path, keys):
  rows = []
  with open(path) as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path}:{i}: not JSON ({e.msg}).') from None
      missing = [k for k in keys if k not in row]
      if missing:
        raise ValueError(f'{path}:{i}: missing key(s) {missing}; each line needs '
                         f'{list(keys)}.')
      rows.append(row)
  if not rows:
    raise ValueError(f'{path}: no examples.')
  return rows


def _generate_mode(engine) -> None:
  """Exact match of each row's answer, sampled with seed + i, cut at --until."""
  from dllm_jax.serving import Request  # pylint: disable=g-import-not-at-top
  from dllm_jax.serving.server import apply_stop  # pylint: disable=g-import-not-at-top
  rows = _read_jsonl(_DATA.value, ('prompt', 'answer'))
  sampling = engine.sampling_for(_GEN_LENGTH.value, _BLOCK_LENGTH.value, _STEPS.value,
                                 temperature=_TEMPERATURE.value,
                                 # Unset (0) for the block sampler, which has none.
                                 cfg_scale=_CFG_SCALE.value or None)
  stops = [u.encode().decode('unicode_escape') for u in _UNTIL.value]
  done = engine.generate([Request(r['prompt'], sampling, seed=_SEED.value + i)
                          for i, r in enumerate(rows)])
  correct = sum(apply_stop(c.text, stops)[0] == r['answer'] for c, r in zip(done, rows))
  print(f'\n| examples | exact match |\n|---|---|\n| {len(rows)} | '
        f'{correct / len(rows):.3f} |')


def _heldout_mode(engine, data_cfg: dict, opts: dict, key) -> None:
  """Per-token negative ELBO (or block NELBO) of held-out rows of the run's data:
  its data config (keys an older checkpoint lacks keep their defaults), read as
  pretraining rows, one at a time, in this process."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dllm_jax.evaluation import likelihood  # pylint: disable=g-import-not-at-top
  from dllm_jax.training.inputs import make_dataset  # pylint: disable=g-import-not-at-top
  from launch.configs import default  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  config = default.get_config()
  config.data.update({k: v for k, v in data_cfg.items() if k in config.data})
  config.data.num_workers = 0
  config.seed, config.train.objective = _SEED.value, 'pretrain'
  it = iter(make_dataset(config, engine.tokenizer, split='validation', num_epochs=1,
                         batch_size=1))
  total, count = 0.0, 0
  for i in range(_NUM_ROWS.value):
    row = {k: v[0] for k, v in next(it).items()}
    seg = row.get('segment_ids', np.ones_like(row['tokens']))  # 'stream': one.
    pos = row.get('positions', np.arange(len(row['tokens'])))
    n = int(np.sum(seg > 0))
    nelbo = likelihood.negative_elbo(
        engine.params, jnp.asarray(row['tokens']), jnp.asarray(0), jnp.asarray(n),
        jax.random.fold_in(key, i), segment_ids=jnp.asarray(seg),
        positions=jnp.asarray(pos), **opts)
    total, count = total + float(nelbo), count + n
  per_token = total / count
  print(f'\n{_NUM_ROWS.value} held-out rows of {data_cfg["seq_len"]} tokens ('
        f'{data_cfg["source"]} validation split), mc_num {_MC_NUM.value}, '
        f'{time.time() - t0:.1f} s\n')
  bound = f'block NELBO (block {engine.trained_block_size})' if (
      engine.trained_block_size) else '-ELBO'
  print(f'| tokens | {bound} nats/token | bits/token | perplexity bound |')
  print('|---|---|---|---|')
  print(f'| {count} | {per_token:.4f} | {per_token / math.log(2):.4f} | '
        f'{math.exp(per_token):.3f} |')


def _pairs_mode(engine, opts: dict, key) -> None:
  """The log-likelihood of each row's answer given its prompt."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dllm_jax.evaluation import likelihood  # pylint: disable=g-import-not-at-top
  tok = engine.tokenizer
  rows = _read_jsonl(_DATA.value, ('prompt', 'answer'))
  print('| # | answer tokens | log-likelihood (nats) | per token |')
  print('|---|---|---|---|')
  lls = []
  for i, r in enumerate(rows):
    answer = tok.encode(r['answer'])
    ll = likelihood.log_likelihood(engine.params, tok.encode(r['prompt'], add_bos=True),
                                   answer, jax.random.fold_in(key, i), **opts)
    lls.append(ll)
    print(f'| {i} | {len(answer)} | {ll:.3f} | {ll / len(answer):.3f} |')
  print(f'\nmean log-likelihood {np.mean(lls):.3f} nats over {len(rows)} pairs')


def _choice_mode(engine, opts: dict, key) -> None:
  """Multiple choice: the choice of highest likelihood against the label."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dllm_jax.evaluation import likelihood  # pylint: disable=g-import-not-at-top
  tok = engine.tokenizer
  rows = _read_jsonl(_DATA.value, ('prompt', 'choices', 'label'))
  correct = 0
  for i, r in enumerate(rows):
    prompt = tok.encode(r['prompt'], add_bos=True)
    scores = [likelihood.log_likelihood(engine.params, prompt, tok.encode(c),
                                        jax.random.fold_in(key, i), **opts)
              for c in r['choices']]
    correct += int(np.argmax(scores)) == int(r['label'])
  print(f'\n| examples | accuracy |\n|---|---|\n| {len(rows)} | '
        f'{correct / len(rows):.3f} |')


def main(argv):
  cli.start(argv)
  import jax  # pylint: disable=g-import-not-at-top
  from dllm_jax.evaluation import likelihood  # pylint: disable=g-import-not-at-top
  from dllm_jax.serving import Engine  # pylint: disable=g-import-not-at-top
  from dllm_jax.training import workdir as checkpoint  # pylint: disable=g-import-not-at-top

  with cli.one_line_errors():
    if _MODE.value != 'heldout' and not _DATA.value:
      raise ValueError(f'--mode={_MODE.value} needs --data=FILE.jsonl.')
    if _MODE.value != 'heldout' and not os.path.isfile(_DATA.value):
      raise FileNotFoundError(f'--data={_DATA.value}: no such file.')
    engine = Engine.from_workdir(_WORKDIR.value)
    data_cfg = checkpoint.read_meta(_WORKDIR.value)['config']['data']
    # A block-diffusion checkpoint: the block NELBO it was trained on.
    opts = dict(config=engine.config, mc_num=_MC_NUM.value, batch_size=_BATCH_SIZE.value,
                cfg_scale=_CFG_SCALE.value, block_size=engine.trained_block_size)
    likelihood.check_block_options(engine.trained_block_size, _CFG_SCALE.value)
    key = jax.random.key(_SEED.value)
    if _MODE.value == 'heldout':
      _heldout_mode(engine, data_cfg, opts, key)
    elif _MODE.value == 'pairs':
      _pairs_mode(engine, opts, key)
    elif _MODE.value == 'generate':
      _generate_mode(engine)
    else:
      _choice_mode(engine, opts, key)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
