r"""Full-sequence diffusion vs block diffusion (two block sizes) vs the AR twin, at
the same training compute and the same `tiny` shape.

  python experiments/block_diffusion/compare.py      # ~25 min on 2 loaded CPU cores

Task: "s>r." where s is --min_len..--max_len random letters of --letters and r
is s reversed; prompts "s>", answers "r." then EOS (answers of different
lengths). One example per row, LLaDA's SFT layout (the answer EOS-filled to the
end of the row, the prompt never masked; the AR twin trains on the same rows).
Held-out strings are never trained on. Compute: a block-diffusion step runs
the model on 2L tokens ([x_t, x_0]), so it gets half the rows per step of the
others (same model FLOPs per step, same steps). Reported per model:
  * held-out NLL bound per answer token: diffusion the masked-diffusion ELBO
    (t ~ U(0,1), weight 1/t); block diffusion the block ELBO (t ~ U(eps, 1) per
    block, weight 1/t, clean earlier blocks); the AR twin its exact NLL;
  * exact-match answers across the steps dial (tokens committed per step), with
    tokens/s (answer tokens up to EOS / sampling wall time, compiled) and answer
    tokens per model forward.
Writes results.md and results.png next to this file.
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
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from dllm_jax import models  # pylint: disable=g-import-not-at-top,wrong-import-position
from dllm_jax.objectives import block as bd  # pylint: disable=g-import-not-at-top,wrong-import-position
from dllm_jax.objectives import masked as diffusion  # pylint: disable=g-import-not-at-top,wrong-import-position
from dllm_jax.sampling import autoregressive, block  # pylint: disable=g-import-not-at-top,wrong-import-position
from dllm_jax.sampling import generate as gen  # pylint: disable=g-import-not-at-top,wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
TOK = common.TOKENIZER
SEQ, GEN = 32, 16  # Row length; tokens the AR and block samplers generate.


def reversal_texts(n: int, seed: int, letters: str = 'abcdefghij', min_len: int = 3,
                   max_len: int = 8) -> list[str]:
  """n distinct lines "s>reversed(s)." with min_len..max_len letters."""
  rng = np.random.default_rng(seed)
  out = set()
  while len(out) < n:
    s = ''.join(rng.choice(list(letters), rng.integers(min_len, max_len + 1)))
    out.add(f'{s}>{s[::-1]}.')
  return sorted(out)


def prompts_and_answers(texts):
  prompts = [[TOK.bos_id] + TOK.encode(t[:t.index('>') + 1]).tolist() for t in texts]
  answers = [t[t.index('>') + 1:] for t in texts]
  return prompts, answers


def sft_rows(texts) -> dict[str, np.ndarray]:
  """One example per row of SEQ tokens, LLaDA's SFT layout: BOS, the prompt
  "s>", the answer "r." and EOS up to the end of the row (the padding is EOS,
  trained on, so the full-sequence sampler's canvas [prompt, MASK...] is a
  layout the model knows); `prompt_lengths` [N] marks the never-masked prompt."""
  prompts, answers = prompts_and_answers(texts)
  tokens = np.full((len(texts), SEQ), TOK.eos_id, np.int32)
  lengths = np.zeros(len(texts), np.int32)
  for i, (p, a) in enumerate(zip(prompts, answers)):
    ids = p + TOK.encode(a).tolist()
    if len(ids) >= SEQ:
      raise ValueError(f'{texts[i]!r} needs {len(ids) + 1} tokens; a row has {SEQ}.')
    tokens[i, :len(ids)], lengths[i] = ids, len(p)
  return {'tokens': tokens, 'prompt_lengths': lengths}


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
  """Held-out NLL bound per answer token (answer and EOS fill, the prompt given;
  see module doc), averaged over noise draws."""
  def one(key):
    batch = {k: jnp.asarray(v) for k, v in rows.items()}
    if kind == 'ar':
      lb = diffusion.next_token_batch({'tokens': batch['tokens']})
      # Position i predicts token i + 1: count answer tokens only.
      answer = jnp.arange(SEQ)[None, :] + 1 >= batch['prompt_lengths'][:, None]
      w = lb.weights * answer
      lb = lb.replace(weights=w, denom=w.sum())
    elif kind == 'diffusion':
      noise = diffusion.sample_noise(key, batch['tokens'].shape, 0.0, True)
      lb = diffusion.sft_batch(batch, noise, mask_id=cfg.ids.mask)
    else:
      elbo = bd.BlockDiffusionOptions(block_size=opts.block_size, noise='block',
                                      weight='inv_t')
      lb = bd.make_loss_batch(batch, key, mask_id=cfg.ids.mask, options=elbo)
    logits = models.forward(params, lb.inputs, positions=lb.positions, config=cfg,
                            attention=lb.attention)
    return diffusion.loss_from_logits(logits, lb)
  f = jax.jit(one)
  return float(np.mean([f(jax.random.key(100 + i)) for i in range(draws)]))


def timed(fn):
  jax.block_until_ready(fn())  # Compile.
  t0 = time.time()
  out = jax.block_until_ready(fn())
  return out, time.time() - t0


def sample_rows(kind, params, cfg, prompts, answers, opts, dial, threshold):
  """[(setting, exact match, tokens/s, tokens/step)] across the steps dial
  (tokens committed per step; block diffusion only up to its block size) and
  the threshold rule."""
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
  region = SEQ - min(map(len, prompts))  # The most masks of a diffusion canvas.
  for per_step in dial:
    if kind == 'diffusion':
      sc = gen.SamplingConfig(steps=-(-region // per_step))
      rows.append(_diffusion_row(f'{per_step} token/step', params, cfg, prompts,
                                 answers, sc))
    elif per_step <= opts.block_size:
      sc = block.BlockSamplingConfig(gen_length=GEN, block_length=opts.block_size,
                                     steps=opts.block_size // per_step, parallel='fixed')
      rows.append(_block_row(f'{per_step} token/step', params, cfg, arr, lengths,
                             answers, sc))
  label = f'threshold {threshold}'
  if kind == 'diffusion':
    sc = gen.SamplingConfig(steps=region, parallel='threshold', threshold=threshold)
    rows.append(_diffusion_row(label, params, cfg, prompts, answers, sc))
  else:
    sc = block.BlockSamplingConfig(gen_length=GEN, block_length=opts.block_size,
                                   steps=opts.block_size, threshold=threshold)
    rows.append(_block_row(label, params, cfg, arr, lengths, answers, sc))
  return rows


def _diffusion_row(label, params, cfg, prompts, answers, sc):
  """LLaDA's sampler (`sc`: steps and rule) on the training layout, one canvas
  [prompt, MASK...] of SEQ tokens per prompt, one block: a row with n masks
  commits n / steps of them per step (rounded as LLaDA's schedule rounds)."""
  canvas = np.asarray([p + [cfg.ids.mask] * (SEQ - len(p)) for p in prompts], np.int32)
  sc = dataclasses.replace(sc, gen_length=SEQ, block_length=SEQ)
  out, seconds = timed(lambda: gen.infill_sample(params, canvas, jax.random.key(0),
                                                 config=cfg, sampling=sc))
  tokens = np.asarray(out.tokens)
  got = [decode_answer(tokens[i, len(p):]) for i, p in enumerate(prompts)]
  toks = sum(len(a) + 1 for a in got)
  return (label, _match(got, answers), toks / seconds, toks / len(got) / int(out.nfe))


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
  parser.add_argument('--steps', type=int, default=1500)
  parser.add_argument('--rows', type=int, default=16, help='rows per step (block '
                      'diffusion: half, as its input is twice as long)')
  parser.add_argument('--blocks', default='4,16')
  parser.add_argument('--num_train', type=int, default=2000)
  parser.add_argument('--num_eval', type=int, default=64)
  parser.add_argument('--letters', default='abcde', help='alphabet of the strings')
  parser.add_argument('--min_len', type=int, default=3)
  parser.add_argument('--max_len', type=int, default=6)
  parser.add_argument('--dial', default='1,2,4,8', help='tokens committed per step')
  parser.add_argument('--threshold', type=float, default=0.9)
  parser.add_argument('--models', default='diffusion,block,ar',
                      help='which of diffusion, block, ar to run (probes)')
  parser.add_argument('--lr', type=float, default=3e-3)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', default=HERE)
  args = parser.parse_args()
  t0 = time.time()
  texts = reversal_texts(args.num_train + args.num_eval, args.seed, args.letters,
                         args.min_len, args.max_len)
  order = np.random.default_rng(args.seed).permutation(len(texts))
  train_texts = [texts[i] for i in order[args.num_eval:]]
  eval_texts = [texts[i] for i in order[:args.num_eval]]
  rows, held = sft_rows(train_texts), sft_rows(eval_texts)
  prompts, answers = prompts_and_answers(eval_texts)
  models = [('diffusion (full sequence)', 'diffusion', None)]
  models += [(f'block diffusion B={b}', 'block', bd.BlockDiffusionOptions(block_size=int(b)))
             for b in args.blocks.split(',')]
  models.append(('autoregressive twin', 'ar', None))
  models = [m for m in models if m[1] in args.models.split(',')]
  dial = [int(x) for x in args.dial.split(',')]
  results = []
  for name, kind, opts in models:
    cfg = common.model_config(kind == 'ar')
    start = time.time()
    objective = {'ar': 'next_token', 'diffusion': 'sft', 'block': 'block_diffusion'}[kind]
    params = common.train(
        {'tokens': rows['tokens']} if kind == 'ar' else rows, cfg, steps=args.steps,
        lr=args.lr, seed=args.seed,
        batch_size=args.rows // 2 if kind == 'block' else args.rows,
        objective=objective, block_options=opts)
    train_s = time.time() - start
    nll = nll_bound(kind, params, cfg, held, opts)
    samples = sample_rows(kind, params, cfg, prompts, answers, opts, dial,
                          args.threshold)
    print(f'{name}: train {train_s:.0f} s, NLL bound {nll:.3f}', flush=True)
    for label, acc, tps, per in samples:
      print(f'  {label}: exact match {acc:.3f}, {tps:.0f} tokens/s, {per:.2f} '
            'tokens/forward', flush=True)
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
      f'--num_eval={args.num_eval} '
      f'--letters={args.letters} --min_len={args.min_len} --max_len={args.max_len} '
      f'--lr={args.lr} --seed={args.seed}` ({seconds / 60:.1f} min on this machine: '
      '2 CPU cores shared with other jobs). `tiny` shape, byte tokenizer, '
      f'{args.num_train} training lines "s>reversed(s)." ({args.min_len}-'
      f'{args.max_len} letters of "{args.letters}"), one per row of {SEQ} tokens '
      '(BOS, prompt, answer, EOS to the end of the row; the prompt never masked), '
      f'{args.num_eval} held-out lines; {args.steps} steps each at learning rate '
      f'{args.lr}, {args.rows} rows per step ({args.rows // 2} for block diffusion, '
      f'whose input is 2 x {SEQ} tokens: the same model FLOPs per step). Greedy '
      'decoding.', '',
      '| model | held-out NLL bound / answer token | train s |', '|---|---|---|']
  for name, train_s, nll, _ in results:
    lines.append(f'| {name} | {nll:.3f} | {train_s:.0f} |')
  lines += ['', '| model | sampler setting | exact match | tokens/s | answer tokens / '
            'forward |', '|---|---|---|---|---|']
  for name, _, _, samples in results:
    for label, acc, tps, per in samples:
      lines.append(f'| {name} | {label} | {acc:.3f} | {tps:.0f} | {per:.2f} |')
  lines += ['', 'NLL bounds per answer token (answer and EOS fill, the prompt given): '
            'diffusion and block diffusion an upper bound (ELBO), the AR twin its '
            'exact NLL. "k token/step" commits k tokens per forward (the block '
            'sampler: block / k steps per block, so not above the block size); '
            f'"threshold {args.threshold}" commits every position above it (at least '
            'one). tokens/s and the last column count answer tokens up to and '
            'including EOS: the full-sequence sampler fills its whole canvas '
            f'(the {SEQ}-token row after the prompt) whatever the answer length, the '
            'block sampler stops each row at the end of the block holding its EOS '
            'and spends one more forward per finished block on its keys/values, the '
            f'AR twin runs {GEN} greedy steps (it would stop at EOS with 1.00). '
            'Timings on a CPU shared with other jobs are noisy.']
  path = os.path.join(args.out, 'results.md')
  kept = ''  # Sections added below the table by other commands (## headings).
  if os.path.exists(path):
    old = open(path).read()
    kept = old[old.index('\n## '):] if '\n## ' in old else ''
  with open(os.path.join(args.out, 'results.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n' + kept)
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  axes[0].bar([r[0].replace(' ', '\n', 2) for r in results], [r[2] for r in results])
  axes[0].set_ylabel('held-out NLL bound / answer token (nats)')
  axes[0].tick_params(axis='x', labelsize=7)
  for name, _, _, samples in results:
    pts = [(per, acc) for label, acc, _, per in samples]
    axes[1].plot(*zip(*pts), 'o-', label=name)
  axes[1].set_xlabel('answer tokens / forward')
  axes[1].set_ylabel('exact match')
  axes[1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, 'results.png'), dpi=100)
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
