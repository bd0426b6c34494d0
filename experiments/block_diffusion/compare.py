r"""Full-sequence diffusion vs block diffusion (two block sizes) vs the AR twin, at
the same training compute and the same `tiny` shape.

  python experiments/block_diffusion/compare.py      # ~10 min on 2 loaded CPU cores

Task: "s>r." where s is 3-8 random letters and r is s reversed; prompts "s>",
answers "r." then EOS (answers of different lengths). Held-out strings are never
trained on. Compute: a block-diffusion step runs the model on 2L tokens ([x_t,
x_0]), so it gets half the rows per step of the others (same model FLOPs per
step, same steps). Reported per model:
  * held-out NLL bound per token: diffusion the masked-diffusion ELBO (t ~ U(0,1),
    weight 1/t); block diffusion the block ELBO (t ~ U(eps, 1) per block, weight
    1/t, clean earlier blocks); the AR twin its exact NLL (per predicted token);
  * exact-match answers across the steps dial (tokens committed per step), with
    tokens/s (answer tokens up to EOS / sampling wall time, compiled) and tokens
    per step (answer tokens / model forwards).
Writes results.md and results.png next to this file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import common  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from dllm_jax import block_diffusion as bd  # pylint: disable=g-import-not-at-top,wrong-import-position
from dllm_jax import diffusion, model  # pylint: disable=g-import-not-at-top,wrong-import-position
from dllm_jax.sampling import autoregressive, block  # pylint: disable=g-import-not-at-top,wrong-import-position
from dllm_jax.sampling import generate as gen  # pylint: disable=g-import-not-at-top,wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
TOK = common.TOKENIZER
SEQ, GEN = 64, 16


def reversal_texts(n: int, seed: int, letters: str = 'abcdefghij') -> list[str]:
  """n distinct lines "s>reversed(s)." with 3-8 letters."""
  rng = np.random.default_rng(seed)
  out = set()
  while len(out) < n:
    s = ''.join(rng.choice(list(letters), rng.integers(3, 9)))
    out.add(f'{s}>{s[::-1]}.')
  return sorted(out)


def prompts_and_answers(texts):
  prompts = [[TOK.bos_id] + TOK.encode(t[:t.index('>') + 1]).tolist() for t in texts]
  answers = [t[t.index('>') + 1:] for t in texts]
  return prompts, answers


def right_pad(prompts):
  lengths = np.array([len(p) for p in prompts])
  arr = np.full((len(prompts), lengths.max()), TOK.pad_id, np.int32)
  for i, p in enumerate(prompts):
    arr[i, :len(p)] = p
  return arr, lengths


def decode_answer(ids) -> str:
  ids = list(ids)
  if TOK.eos_id in ids:
    ids = ids[:ids.index(TOK.eos_id)]
  return TOK.decode(np.asarray([i for i in ids if i < 256], np.int32))


def nll_bound(kind, params, cfg, rows, opts, draws=8):
  """Held-out NLL bound per token (see module doc), averaged over noise draws."""
  def one(key):
    batch = {k: jnp.asarray(v) for k, v in rows.items()}
    if kind == 'ar':
      lb = diffusion.next_token_batch(batch)
      logits = model.forward(params, lb.inputs, lb.segment_ids, lb.positions, config=cfg)
      return diffusion.loss_from_logits(logits, lb)
    if kind == 'diffusion':
      noise = diffusion.sample_noise(key, batch['tokens'].shape, 0.0, True)
      lb = diffusion.pretrain_batch(batch, noise, mask_id=cfg.ids.mask)
      logits = model.forward(params, lb.inputs, lb.segment_ids, lb.positions, config=cfg)
      lb = lb.replace(denom=(batch['segment_ids'] != 0).sum().astype(jnp.float32))
      return diffusion.loss_from_logits(logits, lb)
    elbo = bd.BlockDiffusionOptions(block_size=opts.block_size, noise='block',
                                    weight='inv_t')
    lb = bd.make_loss_batch(batch, key, mask_id=cfg.ids.mask, options=elbo)
    logits = model.forward(params, lb.inputs, positions=lb.positions, config=cfg,
                           attention=lb.attention)
    return diffusion.loss_from_logits(logits, lb)
  f = jax.jit(one)
  return float(np.mean([f(jax.random.key(100 + i)) for i in range(draws)]))


def timed(fn):
  jax.block_until_ready(fn())  # Compile.
  t0 = time.time()
  out = jax.block_until_ready(fn())
  return out, time.time() - t0


def sample_rows(kind, params, cfg, prompts, answers, opts):
  """[(setting, exact match, tokens/s, tokens/step)] across the steps dial."""
  arr, lengths = right_pad(prompts)
  rows = []
  if kind == 'ar':
    groups = {}
    for i, p in enumerate(prompts):
      groups.setdefault(len(p), []).append(i)
    got, seconds = [None] * len(prompts), 0.0
    for n, idx in groups.items():
      out, s = timed(lambda: autoregressive.greedy(params, arr[idx, :n], config=cfg,
                                                   gen_length=GEN))
      seconds += s
      for j, i in enumerate(idx):
        got[i] = decode_answer(np.asarray(out)[j, n:])
    toks = sum(len(a) + 1 for a in got)
    rows.append(('greedy, 1 token/step', _match(got, answers), toks / seconds, 1.0))
    return rows
  for per_step in (1, 4):
    if kind == 'diffusion':
      rows.append(_diffusion_row(per_step, params, cfg, prompts, answers))
      continue
    sc = block.BlockSamplingConfig(gen_length=GEN, block_length=opts.block_size,
                                   steps=max(opts.block_size // per_step, 1),
                                   parallel='fixed')
    rows.append(_block_row(f'{per_step} token/step', params, cfg, arr, lengths,
                           answers, sc))
  if kind == 'block':
    sc = block.BlockSamplingConfig(gen_length=GEN, block_length=opts.block_size,
                                   steps=opts.block_size, threshold=0.9)
    rows.append(_block_row('threshold 0.9', params, cfg, arr, lengths, answers, sc))
  return rows


def _diffusion_row(per_step, params, cfg, prompts, answers):
  """LLaDA's sampler on one canvas per prompt ([prompt, MASK * 16], right-padded:
  padding is its own segment), one compile for the batch."""
  canvases = [p + [cfg.ids.mask] * GEN for p in prompts]
  t = max(len(c) for c in canvases)
  canvas = np.full((len(canvases), t), cfg.ids.pad, np.int32)
  real = np.zeros((len(canvases), t), bool)
  for i, c in enumerate(canvases):
    canvas[i, :len(c)], real[i, :len(c)] = c, True
  sc = gen.SamplingConfig(steps=GEN // per_step, gen_length=t, block_length=t)
  out, seconds = timed(lambda: gen.infill(params, canvas, jax.random.key(0), config=cfg,
                                          sampling=sc, canvas_mask=real))
  got = [decode_answer(np.asarray(out)[i, len(p):len(p) + GEN])
         for i, p in enumerate(prompts)]
  toks = sum(len(a) + 1 for a in got)
  return (f'{per_step} token/step', _match(got, answers), toks / seconds, float(per_step))


def _block_row(label, params, cfg, arr, lengths, answers, sc):
  out, seconds = timed(lambda: block.generate(params, arr, jax.random.key(0),
                                              config=cfg, sampling=sc,
                                              prompt_lengths=lengths))
  got = [decode_answer(r) for r in np.asarray(out.tokens)]
  n = np.asarray(out.lengths)
  return (label, _match(got, answers), n.sum() / seconds, n.mean() / int(out.nfe))


def _match(got, want) -> float:
  return float(np.mean([g == w for g, w in zip(got, want)]))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=150)
  parser.add_argument('--rows', type=int, default=16, help='rows per step (block '
                      'diffusion: half, as its input is twice as long)')
  parser.add_argument('--blocks', default='4,16')
  parser.add_argument('--num_train', type=int, default=2000)
  parser.add_argument('--num_eval', type=int, default=32)
  parser.add_argument('--lr', type=float, default=3e-3)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default=HERE)
  args = parser.parse_args()
  t0 = time.time()
  texts = reversal_texts(args.num_train + args.num_eval, args.seed)
  order = np.random.default_rng(args.seed).permutation(len(texts))
  train_texts = [texts[i] for i in order[args.num_eval:]]
  eval_texts = [texts[i] for i in order[:args.num_eval]]
  rows = common.packed_rows(train_texts, SEQ, args.seed)
  held = common.packed_rows(eval_texts, SEQ, args.seed)
  prompts, answers = prompts_and_answers(eval_texts)
  models = [('diffusion (full sequence)', 'diffusion', None)]
  models += [(f'block diffusion B={b}', 'block', bd.BlockDiffusionOptions(block_size=int(b)))
             for b in args.blocks.split(',')]
  models.append(('autoregressive twin', 'ar', None))
  results = []
  for name, kind, opts in models:
    cfg = common.model_config(kind == 'ar')
    start = time.time()
    params = common.train(
        rows, cfg, steps=args.steps, lr=args.lr, seed=args.seed,
        batch_size=args.rows // 2 if kind == 'block' else args.rows,
        objective='block_diffusion' if kind == 'block' else None, block_options=opts)
    train_s = time.time() - start
    nll = nll_bound(kind, params, cfg, held, opts)
    samples = sample_rows(kind, params, cfg, prompts, answers, opts)
    print(f'{name}: train {train_s:.0f} s, NLL bound {nll:.3f}, {samples}', flush=True)
    results.append((name, train_s, nll, samples))
  write_report(results, args, time.time() - t0, len(rows['tokens']))


def write_report(results, args, seconds, n_rows):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  lines = [
      '# Block diffusion vs full-sequence diffusion vs the AR twin', '',
      f'Command: `python experiments/block_diffusion/compare.py --steps={args.steps} '
      f'--rows={args.rows} --blocks={args.blocks} --num_train={args.num_train} '
      f'--seed={args.seed}` ({seconds / 60:.1f} min on this machine: 2 CPU cores '
      f'shared with other jobs). `tiny` shape, byte tokenizer, {args.num_train} '
      f'training lines "s>reversed(s)." ({n_rows} packed rows of {SEQ}), '
      f'{args.num_eval} held-out lines; {args.steps} steps each, {args.rows} rows per '
      f'step ({args.rows // 2} for block diffusion, whose input is 2 x {SEQ} tokens: '
      'the same model FLOPs per step). Greedy decoding; answers up to 16 tokens.', '',
      '| model | held-out NLL bound / token | train s |', '|---|---|---|']
  for name, train_s, nll, _ in results:
    lines.append(f'| {name} | {nll:.3f} | {train_s:.0f} |')
  lines += ['', '| model | sampler setting | exact match | tokens/s | tokens/step |',
            '|---|---|---|---|---|']
  for name, _, _, samples in results:
    for label, acc, tps, per in samples:
      lines.append(f'| {name} | {label} | {acc:.3f} | {tps:.0f} | {per:.2f} |')
  lines += ['', 'NLL bounds: diffusion and block diffusion report an upper bound '
            '(ELBO) on the NLL of every token of a row, the AR twin its exact NLL of '
            'every token after the first. tokens/s counts answer tokens up to and '
            'including EOS; the full-sequence sampler fills its whole 16-token '
            'canvas whatever the answer length, the block sampler stops each row at '
            'the end of the block holding its EOS. Timings on a CPU shared with '
            'other jobs are noisy.']
  with open(os.path.join(args.out, 'results.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  axes[0].bar([r[0].replace(' ', '\n', 2) for r in results], [r[2] for r in results])
  axes[0].set_ylabel('held-out NLL bound / token (nats)')
  axes[0].tick_params(axis='x', labelsize=7)
  for name, _, _, samples in results:
    pts = [(per, acc) for label, acc, _, per in samples]
    axes[1].plot(*zip(*pts), 'o-', label=name)
  axes[1].set_xlabel('tokens / step')
  axes[1].set_ylabel('exact match')
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, 'results.png'), dpi=100)
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
