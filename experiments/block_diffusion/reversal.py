r"""The reversal curse for block diffusion: which block sizes keep LLaDA's reverse recall?

  python experiments/block_diffusion/reversal.py     # ~25 min on 2 loaded CPU cores

Data and scoring come from ../reversal_curse/run.py (its synthetic facts "NAME is
DESCRIPTION.", its prefix/answer split and BPE tokenizer route), here only the
facts, fewer of them, so that a short run memorises them. Models: block
diffusion at each --blocks size (same `tiny` shape, data, steps). Queries fill
masks in the training layout, 1 token per step, greedy, with the block-causal
attention the model was trained for: forward "NAME is [M]*n", reverse "[M]*n is
DESCRIPTION." (blocks count from the line's first token). A masked name sees
the description only when both lie in one block, so reverse recall should
survive large blocks and vanish for small ones. Writes reversal.md and
reversal.png next to this file.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from reversal_curse import run as rc  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from dllm_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from dllm_jax.models.attention import AttentionSpec  # pylint: disable=g-import-not-at-top,wrong-import-position
from dllm_jax.objectives import block as bd  # pylint: disable=g-import-not-at-top,wrong-import-position
from dllm_jax.tokenizers import sp as sp_tokenizer  # pylint: disable=g-import-not-at-top,wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))


@functools.partial(jax.jit, static_argnames=('cfg', 'block_size', 'steps'))
def block_fill(params, canvas, seg, *, cfg, block_size, steps):
  """Greedy infilling, the most confident masked position of each row per step,
  under block-causal attention (blocks from position 0; padding its own segment),
  block by block as the block sampler decodes: only the earliest block that
  still has masks commits (training never shows a block masked earlier blocks)."""
  spec = AttentionSpec(segment_ids=seg, block_size=block_size)
  blk = jnp.arange(canvas.shape[1]) // block_size

  def step(x, _):
    logits = models.forward(params, x, config=cfg, attention=spec).astype(jnp.float32)
    logits = logits.at[..., cfg.ids.mask].set(-jnp.inf)
    cand = jnp.argmax(logits, -1)
    masked = x == cfg.ids.mask
    first = jnp.min(jnp.where(masked, blk, blk.shape[0]), -1, keepdims=True)
    conf = jnp.where(masked & (blk == first), jax.nn.softmax(logits, -1).max(-1),
                     -jnp.inf)
    best = jnp.argmax(conf, -1)
    has = jnp.any(x == cfg.ids.mask, -1)
    rows = jnp.arange(x.shape[0])
    new = x.at[rows, best].set(jnp.where(has, cand[rows, best], x[rows, best]))
    return new, None
  return jax.lax.scan(step, canvas, None, length=steps)[0]


def evaluate(params, cfg, block_size, facts):
  """Exact-match forward (NAME -> DESCRIPTION) and reverse accuracy."""
  bos, eos, m = rc.TOK.bos_id, rc.TOK.eos_id, cfg.ids.mask
  fwd_parts = [rc.split(a, ' is ', b, '.') for a, b in facts]
  rev_parts = [(a, ' is ' + b + '.') for a, b in facts]
  fwd = [[bos] + rc.enc(p) + [m] * len(rc.enc(q)) + [eos] for p, q in fwd_parts]
  rev = [[bos] + [m] * len(rc.enc(p)) + rc.enc(q) + [eos] for p, q in rev_parts]
  want = [[bos] + rc.enc(p) + rc.enc(q) + [eos] for p, q in fwd_parts + rev_parts]
  canvases = fwd + rev
  t = max(len(c) for c in canvases)
  canvas = np.full((len(canvases), t), cfg.ids.pad, np.int32)
  seg = np.zeros_like(canvas)
  for i, c in enumerate(canvases):
    canvas[i, :len(c)], seg[i, :len(c)] = c, 1
  steps = max(c.count(m) for c in canvases)
  got = np.asarray(block_fill(params, jnp.asarray(canvas), jnp.asarray(seg), cfg=cfg,
                              block_size=block_size, steps=steps))
  ok = [got[i, :len(c)].tolist() == want[i] for i, c in enumerate(canvases)]
  k = len(facts)
  return float(np.mean(ok[:k])), float(np.mean(ok[k:]))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=800)
  parser.add_argument('--rows', type=int, default=16)
  parser.add_argument('--num_facts', type=int, default=24)
  parser.add_argument('--blocks', default='4,8,32')
  parser.add_argument('--seq', type=int, default=32, help='packed row length '
                      '(a multiple of every block size)')
  parser.add_argument('--lr', type=float, default=3e-3)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default=HERE)
  args = parser.parse_args()
  t0 = time.time()
  facts = rc.synthetic_facts(args.num_facts, args.seed)
  texts = [f'{n} is {d}.' for n, d in facts]
  path = sp_tokenizer.train(texts, os.path.join(tempfile.mkdtemp(), 'bpe'),
                            vocab_size=512, model_type='bpe', hard_vocab_limit=False)
  rc.TOK = sp_tokenizer.SentencePieceTokenizer(path)  # rc.enc / rc.split read it.
  rows = common.packed_rows(texts, args.seq, args.seed, tokenizer=rc.TOK)
  cfg = common.model_config(False, tokenizer=rc.TOK)
  longest = max(len(rc.TOK.encode(t)) + 2 for t in texts)
  results = []
  for b in [int(x) for x in args.blocks.split(',')]:
    params = common.train(rows, cfg, steps=args.steps, lr=args.lr, seed=args.seed,
                          batch_size=args.rows, objective='block_diffusion',
                          block_options=bd.BlockDiffusionOptions(block_size=b))
    fwd, rev = evaluate(params, cfg, b, facts)
    print(f'block {b}: forward {fwd:.3f} reverse {rev:.3f}', flush=True)
    results.append((b, fwd, rev))
  write_report(results, args, time.time() - t0, longest, len(rows['tokens']))


def write_report(results, args, seconds, longest, n_rows):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  lines = [
      '# Reversal curse for block diffusion', '',
      f'Command: `python experiments/block_diffusion/reversal.py --steps={args.steps} '
      f'--rows={args.rows} --num_facts={args.num_facts} --blocks={args.blocks} '
      f'--seq={args.seq} --lr={args.lr} '
      f'--seed={args.seed}` ({seconds / 60:.1f} min on this machine, 2 CPU cores '
      f'shared with other jobs). `tiny` shape, BPE tokenizer trained on the facts '
      f'({rc.TOK.vocab_size} ids), {args.num_facts} synthetic facts "NAME is '
      f'DESCRIPTION." written forward only ({n_rows} packed rows of {args.seq}, lines of '
      f'at most {longest} tokens with BOS/EOS), {args.steps} steps of {args.rows} '
      'rows, block diffusion (LLaDA2 noise), greedy infilling under block-causal '
      'attention, one token per step, block by block.', '',
      '| block size | forward (NAME -> DESCRIPTION) | reverse (DESCRIPTION -> NAME) |',
      '|---|---|---|']
  for b, fwd, rev in results:
    lines.append(f'| {b} | {fwd:.3f} | {rev:.3f} |')
  lines += ['', f'A block of {longest} or more tokens holds a whole line: the masked '
            'name then attends to the description (in-block bidirectional), as in '
            'full-sequence diffusion; smaller blocks put the name in an earlier block '
            'than the description, which it can never see.']
  with open(os.path.join(args.out, 'reversal.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  fig, ax = plt.subplots(figsize=(5, 3.5))
  xs = np.arange(len(results))
  ax.bar(xs - 0.2, [r[1] for r in results], 0.4, label='forward')
  ax.bar(xs + 0.2, [r[2] for r in results], 0.4, label='reverse')
  ax.set_xticks(xs, [f'B={r[0]}' for r in results])
  ax.set_ylim(0, 1)
  ax.set_ylabel('exact match')
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, 'reversal.png'), dpi=100)
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
