r"""The steps dial: accuracy and wall time as denoising steps go from gen_length
down to gen_length / 8.

  python experiments/steps_dial/run.py        # ~4 min on 2 CPU cores

Task with checkable answers and mutually dependent tokens: "CATEGORY: WORD." where
WORD is any of eight 8-letter words of the category. One token per step lets each
letter follow the ones already committed; 8 tokens in one step samples every
letter from its own marginal, and the letters of different words mix
("kanguito"). A sample is correct when it is a word of its category. Temperature
1.0 (Gumbel noise), 256 samples per category, for low_confidence and random
remasking at fixed steps, and for Fast-dLLM's adaptive rules (threshold, factor;
steps per answer vary, counted per sample from the commit steps). Writes
results.md and results.png next to this file.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from dllm_jax.sampling import generate as gen  # pylint: disable=g-import-not-at-top,wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
TOK = common.TOKENIZER
WORDS = {
    'animal': ['elephant', 'kangaroo', 'squirrel', 'mosquito', 'flamingo', 'antelope',
               'hedgehog', 'pheasant'],
    'color': ['lavender', 'charcoal', 'burgundy', 'mahogany', 'cerulean', 'viridian',
              'magnolia', 'sapphire'],
    'fruit': ['mandarin', 'tamarind', 'mulberry', 'kumquats', 'plantain', 'rambutan',
              'bilberry', 'cherries'],
    'city': ['shanghai', 'istanbul', 'florence', 'adelaide', 'portland', 'montreal',
             'santiago', 'honolulu'],
}
GEN = 8
RULES = ('low_confidence', 'random', 'threshold', 'factor')


def _canvas(cfg, cats: list[str], samples: int):
  """(canvas [N, T], its mask): `samples` rows per category, 'CATEGORY: ' then
  GEN masks then '.', EOS; padded to the longest."""
  canvases = []
  for c in cats:
    ids = [TOK.bos_id] + TOK.encode(f'{c}: ').tolist() + [cfg.mask_id] * GEN + \
        TOK.encode('.').tolist() + [TOK.eos_id]
    canvases += [ids] * samples
  t = max(len(c) for c in canvases)
  canvas = np.full((len(canvases), t), cfg.pad_id, np.int32)
  mask = np.zeros_like(canvas, bool)
  for i, c in enumerate(canvases):
    canvas[i, :len(c)], mask[i, :len(c)] = c, True
  return canvas, mask


def _settings(rules: list[str], settings_per_rule: int | None) -> list[tuple]:
  """(rule, label, sampler keywords) of every setting run, in table order."""
  settings = [(r, f'{s}', dict(steps=s, remasking=r)) for r in ('low_confidence',
                                                                   'random')
              for s in (GEN, GEN // 2, GEN // 4, GEN // 8)]
  settings += [('threshold', f'tau {tau}', dict(steps=GEN, parallel='threshold',
                                               threshold=tau))
               for tau in (0.9, 0.7, 0.5, 0.3)]
  settings += [('factor', f'f {f}', dict(steps=GEN, parallel='factor', factor=f))
               for f in (1.0, 2.0)]
  return [s for rule, group in itertools.groupby(settings, key=lambda s: s[0])
          if rule in rules
          for s in list(group)[:settings_per_rule]]  # None keeps all.


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--train_steps', type=int, default=4000)
  parser.add_argument('--samples', type=int, default=256)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--layers', type=int, default=None,
                      help='model depth (default: the tiny preset\'s)')
  parser.add_argument('--rules', default=','.join(RULES),
                      help='comma-separated subset of the rules to run')
  parser.add_argument('--settings_per_rule', type=int, default=None,
                      help='run only the first N settings of each rule (default: all)')
  parser.add_argument('--out', default=HERE)
  args = parser.parse_args()
  rules = args.rules.split(',')
  if not set(rules) <= set(RULES):
    raise ValueError(f'--rules={args.rules!r}: each rule must be one of {RULES}.')
  if args.settings_per_rule is not None and args.settings_per_rule < 1:
    raise ValueError(f'--settings_per_rule={args.settings_per_rule}: use at least 1.')
  t_start = time.time()
  texts = [f'{c}: {w}.' for c, ws in WORDS.items() for w in ws]
  cfg = common.model_config(False, **({} if args.layers is None else
                                      {'n_layers': args.layers}))
  params = common.train(common.padded_rows(texts, 32), cfg, steps=args.train_steps,
                        batch_size=32, seed=args.seed)
  cats = list(WORDS)
  canvas, mask = _canvas(cfg, cats, args.samples)
  t = canvas.shape[1]
  settings = _settings(rules, args.settings_per_rule)
  results = []
  for rule, label, kw in settings:
    sc = gen.SamplingConfig(gen_length=t, block_length=t, temperature=1.0, **kw)
    run = lambda sc=sc: jax.block_until_ready(gen.infill_sample(
        params, canvas, jax.random.key(args.seed), config=cfg, sampling=sc,
        canvas_mask=mask))
    run()  # Compile.
    t0 = time.perf_counter()
    state = run()
    seconds = time.perf_counter() - t0
    out, commit = np.asarray(state.tokens), np.asarray(state.commit_step)
    correct, steps_taken = [], []
    for i, row in enumerate(out):
      cat = cats[i // args.samples]
      span = slice(len(cat) + 3, len(cat) + 3 + GEN)
      correct.append(TOK.decode(row[span]) in WORDS[cat])
      steps_taken.append(len(set(commit[i, span].tolist())))
    tps = GEN / float(np.mean(steps_taken))
    results.append((rule, label, tps, float(np.mean(correct)), seconds))
    print(f'  {rule:14s} {label:8s}: {tps:.2f} tokens/step, accuracy '
          f'{results[-1][3]:.3f}, {seconds * 1e3:.0f} ms for {len(canvas)} samples',
          flush=True)
  write_report(results, args, len(canvas), time.time() - t_start)


def _reduced_flags(args) -> str:
  """The size-reducing flags given (not at their defaults), for the command line."""
  flags = {'layers': args.layers, 'settings_per_rule': args.settings_per_rule,
           'rules': None if args.rules == ','.join(RULES) else args.rules}
  return ''.join(f' --{k}={v}' for k, v in flags.items() if v is not None)


def write_report(results, args, n, seconds):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  lines = ['# The steps dial', '',
           f'Command: `python experiments/steps_dial/run.py --train_steps='
           f'{args.train_steps} --samples={args.samples} --seed={args.seed}'
           f'{_reduced_flags(args)}` '
           f'({seconds / 60:.1f} min on this machine, 2 CPU cores). The `tiny` diffusion '
           f'model trained on 32 "CATEGORY: WORD." lines; {n} samples (temperature 1.0) '
           f'of an {GEN}-letter answer per setting; correct = a word of its category.',
           '', 'Fixed rules commit GEN / steps tokens per step; the adaptive ones '
           '(Fast-dLLM threshold tau and factor f, low_confidence) decide per step, '
           'so their tokens/step is the mean over samples of 8 / (steps that '
           'committed something). Wall time: the whole batch (an adaptive batch '
           'runs until its slowest row is done).', '',
           '| rule | setting | tokens/step | accuracy | wall time (ms) |',
           '|---|---|---|---|---|']
  for rule, label, tps, acc, secs in results:
    setting = f'{label} steps' if rule in ('low_confidence', 'random') else label
    lines.append(f'| {rule} | {setting} | {tps:.2f} | {acc:.3f} | {secs * 1e3:.0f} |')
  with open(os.path.join(args.out, 'results.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for rule in RULES:
    pts = sorted((tps, a) for r, _, tps, a, _ in results if r == rule)
    ax.plot([p for p, _ in pts], [a for _, a in pts], 'o-', label=rule)
  ax.set_xscale('log', base=2)
  ax.set_xlabel(f'tokens committed per step ({GEN}-token answer)')
  ax.set_ylabel('accuracy (valid word)')
  ax.set_ylim(0, 1.05)
  ax.legend()
  ax.set_title('The steps dial')
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, 'results.png'), dpi=100)
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
