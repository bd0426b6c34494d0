r"""Variable-length answers: each row of one batch stops at the block holding its EOS.

  python experiments/block_diffusion/variable_length.py     # ~5 min on 2 loaded CPU cores

Trains a block-diffusion `tiny` model (block 4) on compare.py's task ("s>r." with
r the reversed s, 3-8 letters), then samples one batch of held-out prompts of
every length with the cached block sampler (threshold rule, gen_length 32): each
row's answer, its returned length, and the forwards the batch needed against a
fixed 32-token canvas. Writes variable_length.md and variable_length.png here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # pylint: disable=g-import-not-at-top,wrong-import-position

from dllm_jax.objectives import block as bd  # pylint: disable=g-import-not-at-top,wrong-import-position
from dllm_jax.sampling import block  # pylint: disable=g-import-not-at-top,wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--rows', type=int, default=16)
  parser.add_argument('--block', type=int, default=4)
  parser.add_argument('--gen_length', type=int, default=32)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default=HERE)
  args = parser.parse_args()
  t0 = time.time()
  texts = compare.reversal_texts(2000, args.seed)
  held = [t for t in compare.reversal_texts(2600, args.seed + 1) if t not in set(texts)]
  picks = []
  for n in range(3, 9):  # One held-out prompt per length, two of the longest.
    picks += [t for t in held if t.index('>') == n][:1 if n < 8 else 2]
  rows = common.packed_rows(texts, 64, args.seed)  # Its recorded run's row length.
  cfg = common.model_config(False)
  opts = bd.BlockDiffusionOptions(block_size=args.block)
  params = common.train(rows, cfg, steps=args.steps, seed=args.seed,
                        batch_size=args.rows, objective='block_diffusion',
                        block_options=opts)
  prompts, answers = compare.prompts_and_answers(picks)
  arr, lengths = compare.right_pad(prompts)
  sc = block.BlockSamplingConfig(gen_length=args.gen_length, block_length=args.block,
                                 steps=args.block, threshold=0.9)
  out = block.generate(params, arr, jax.random.key(0), config=cfg, sampling=sc,
                       prompt_lengths=lengths)
  toks, lens = np.asarray(out.tokens), np.asarray(out.lengths)
  got = [compare.decode_answer(r) for r in toks]
  # The same batch with EOS never ending a row: every row fills gen_length.
  no_eos = dataclasses.replace(cfg, ids=dataclasses.replace(cfg.ids, eos=cfg.ids.pad))
  never = block.generate(params, arr, jax.random.key(0), config=no_eos, sampling=sc,
                         prompt_lengths=lengths)
  write_report(args, picks, got, answers, lens, int(out.nfe), int(never.nfe),
               time.time() - t0)


def write_report(args, picks, got, answers, lens, nfe, nfe_full, seconds):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  lines = [
      '# Variable-length answers with the block sampler', '',
      f'Command: `python experiments/block_diffusion/variable_length.py '
      f'--steps={args.steps} --rows={args.rows} --block={args.block} '
      f'--gen_length={args.gen_length} --seed={args.seed}` ({seconds / 60:.1f} min on '
      'this machine, 2 CPU cores shared with other jobs). One batch, cached block '
      f'sampler, block {args.block}, threshold 0.9, gen_length {args.gen_length}.', '',
      '| prompt | answer | expected | returned length (EOS included) | correct |',
      '|---|---|---|---|---|']
  for p, g, a, n in zip(picks, got, answers, lens):
    lines.append(f'| `{p[:p.index(">") + 1]}` | `{g}` | `{a}` | {n} | '
                 f'{"yes" if g == a else "no"} |')
  lines += ['', f'The batch took {nfe} forwards and stopped when the last row reached '
            f'its EOS block; with EOS ignored (every row filling {args.gen_length} '
            f'tokens) the same batch takes {nfe_full}.']
  with open(os.path.join(args.out, 'variable_length.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.bar(range(len(lens)), lens, label='returned length')
  ax.plot(range(len(lens)), [len(a) + 1 for a in answers], 'k_', markersize=20,
          label='expected (answer + EOS)')
  ax.axhline(args.gen_length, color='gray', ls='--', label='gen_length')
  ax.set_xticks(range(len(lens)), [p[:p.index('>')] for p in picks], rotation=45,
                fontsize=7)
  ax.set_ylabel('tokens')
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, 'variable_length.png'), dpi=100)
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
