"""Block diffusion training: the [x_t, x_0] objective against its definition and
a NumPy loss (every noise / weight option), the clean copy against a
block-causal forward, tile-skipping attention against the dense mask, runs
that start from another checkpoint, and the one-line errors (the sampler's
tests: tests/test_block_sampler.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.models import attention
from dllm_jax.objectives import block as bd
from dllm_jax.objectives import masked as diffusion
from dllm_jax import models as model
from dllm_jax import models as presets
from dllm_jax.sampling import block
from tests import block_reference as ref

MASK = 260  # The tiny preset's mask id (byte vocabulary).


def _small(**kw):
  return presets.get_preset('tiny', n_layers=2, d_model=32, n_heads=4, d_ff=64,
                            max_len=64, **kw)


def test_mask_equals_the_hand_built_one():
  pos = np.array([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 0, 1]])
  seg = np.array([[1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 0, 0]])
  got = np.asarray(bd.block_mask(jnp.asarray(pos), 2, jnp.asarray(seg)))[0, 0]
  np.testing.assert_array_equal(got, ref.three_part_mask(pos[0], 2, seg[0]))
  got = np.asarray(bd.block_mask(jnp.asarray(pos[:, :6]), 3))[0, 0]
  np.testing.assert_array_equal(got, ref.three_part_mask(pos[0, :6], 3))


def test_clean_copy_equals_a_block_causal_forward(tiny_config, tiny_params):
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 250)

  @jax.jit
  def both_ways(params, tokens):
    lb = bd.make_loss_batch({'tokens': tokens}, jax.random.key(0), mask_id=MASK,
                            options=bd.BlockDiffusionOptions(block_size=4))
    both = jnp.concatenate([tokens, tokens], axis=1)  # x_t = x_0.
    out = model.forward(params, both, positions=lb.positions, config=tiny_config,
                        attention=lb.attention)
    return out, model.forward(params, tokens, config=tiny_config,
                              attention=attention.block_causal(4))
  out, plain = both_ways(tiny_params, tokens)
  np.testing.assert_allclose(out[:, 16:], plain, atol=2e-5)
  np.testing.assert_allclose(out[:, :16], plain, atol=2e-5)  # Same context, too.


def test_loss_equals_numpy_on_packed_sft_rows():
  """Every noise / weight combination (one jitted program): padding and SFT
  prompts stay clean; the loss is finite and equals the NumPy reference."""
  b, l, v = 3, 12, 260
  tokens = jax.random.randint(jax.random.key(1), (b, l), 0, 250)
  seg = jnp.asarray([[1] * 8 + [2] * 4, [1] * 12, [1] * 6 + [0] * 6])
  pos = jnp.asarray([list(range(8)) + list(range(4)), list(range(12)),
                     list(range(6)) + [0] * 6])
  batch = {'tokens': tokens, 'segment_ids': seg, 'positions': pos,
           'prompt_lengths': jnp.asarray([2, 3, 0])}
  key = jax.random.key(3)
  logits = jax.random.normal(jax.random.key(4), (b, 2 * l, v)) * 3
  all_opts = [bd.BlockDiffusionOptions(block_size=4, noise=n, weight=w)
              for n in bd.NOISES for w in bd.WEIGHTS]

  @jax.jit
  def losses(batch):
    lbs = [bd.make_loss_batch(batch, key, mask_id=MASK, options=o) for o in all_opts]
    return lbs, [diffusion.loss_from_logits(logits, lb) for lb in lbs]
  maskable = (np.asarray(seg) != 0) & (np.arange(l)[None] >= np.array([[2], [3], [0]]))
  for opts, lb, got in zip(all_opts, *losses(batch)):
    got = float(got)
    assert np.isfinite(got), opts
    xt = np.asarray(lb.inputs[:, :l])
    assert not ((xt == MASK) & ~maskable).any()  # Padding and prompts stay clean.
    t = np.asarray(bd.noise_levels(jax.random.split(key)[0], pos, 4, opts))
    if opts.noise == 'row':
      assert ((t >= 0.3) & (t <= 0.8)).all() and (t == t[:, :1]).all()
    want = ref.block_loss(np.asarray(logits[:, :l]), np.asarray(tokens), xt, MASK,
                          maskable, None if opts.weight == 'none' else t)
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=str(opts))
    np.testing.assert_array_equal(np.asarray(lb.weights[:, l:]), 0)


def test_block_noise_is_one_level_per_block():
  """noise='block': one t ~ U[eps, 1] per block index (shared by the blocks of
  that index of every document in a row), constant inside a block, different
  across blocks and rows."""
  opts = bd.BlockDiffusionOptions(block_size=4, noise='block', eps=0.5)
  pos = jnp.asarray([list(range(13)) + list(range(19))] * 64)  # Two documents.
  t = np.asarray(jax.jit(bd.noise_levels, static_argnums=(2, 3))(
      jax.random.key(0), pos, 4, opts))
  blk = np.asarray(pos) // 4
  for row_t, row_b in zip(t, blk):
    levels = {k: np.unique(row_t[row_b == k]) for k in np.unique(row_b)}
    assert all(len(u) == 1 for u in levels.values())  # One level per block.
    assert len({float(u[0]) for u in levels.values()}) == len(levels)  # 5 blocks.
  assert len(np.unique(t[:, 0])) == 64  # Rows draw their own levels.
  # U[0.5, 1], not the row range [0.3, 0.8]: 320 draws reach both ends.
  assert 0.5 <= t.min() < 0.52 and 0.98 < t.max() <= 1.0


def test_block_size_schedule_and_bad_block_sizes():
  opts = bd.BlockDiffusionOptions(block_size=16, grow_every=10, grow_from=2)
  assert [int(opts.block_size_at(s)) for s in (0, 9, 10, 25, 1000)] == [2, 2, 4, 8, 16]
  assert opts.sizes() == [2, 4, 8, 16]
  tokens = jnp.arange(16, dtype=jnp.int32)[None] + 3  # The step's size reaches the mask.
  pos = jnp.arange(16)[None]
  for step, size in ((0, 2), (10, 4), (30, 16)):
    lb = bd.make_loss_batch({'tokens': tokens}, jax.random.key(0), step, mask_id=MASK,
                            options=dataclasses.replace(opts, skip_tiles=False))
    np.testing.assert_array_equal(lb.attention.mask, bd.block_mask(pos, size))
  with pytest.raises(ValueError, match='block size 12 does not divide the row length 64'):
    bd.BlockDiffusionOptions(block_size=12).validate(64)
  with pytest.raises(ValueError, match='unknown block noise'):
    bd.BlockDiffusionOptions(noise='token').validate(64)


@pytest.mark.parametrize('packed', [pytest.param(False, marks=pytest.mark.slow), True])
def test_tile_skipping_attention_equals_dense(packed):
  """`attend` given a spec with a tile layout (the union of a growing schedule's
  block sizes 2 and 4, the mask at size 2; grouped-query heads) equals the
  dense masked attention, values and gradients."""
  from dllm_jax.kernels import block_sparse  # pylint: disable=g-import-not-at-top
  l, b = 16, 4
  pos = np.arange(l)[None] if not packed else np.array([list(range(6)) + list(range(10))])
  seg = None if not packed else jnp.asarray([[1] * 6 + [2] * 10])
  mask = bd.block_mask(jnp.asarray(pos), 2, seg)
  q = jax.random.normal(jax.random.key(0), (1, 2 * l, 2, 8))
  k, v = (jax.random.normal(jax.random.key(i), (1, 2 * l, 1, 8)) for i in (1, 2))
  pairs = block_sparse.tile_pairs(l, b, 4, packed=packed)
  assert len(pairs) < (2 * l // 4) ** 2 * (0.55 if packed else 0.35)
  spec = attention.AttentionSpec(mask=mask, tiles=block_sparse.TileLayout(
      l, (2, b), 4, packed))

  @jax.jit
  def both(q, k):
    tiled = lambda q, k: attention.attend(q, k, v, spec)
    dense = lambda q, k: jax.nn.dot_product_attention(q, k, v, mask=mask)
    grad = lambda f: jax.grad(lambda q, k: jnp.sin(f(q, k)).sum(), argnums=(0, 1))
    return tiled(q, k), dense(q, k), grad(tiled)(q, k), grad(dense)(q, k)
  tiled, dense, g_tiled, g_dense = both(q, k)
  np.testing.assert_allclose(tiled, dense, atol=1e-5)
  np.testing.assert_allclose(g_tiled[0], g_dense[0], atol=1e-5)
  np.testing.assert_allclose(g_tiled[1], g_dense[1], atol=1e-5)


def _packed_rows():
  """Two rows of 32 tokens, two documents each (13 + 19)."""
  return {'tokens': jax.random.randint(jax.random.key(1), (2, 32), 0, 250),
          'segment_ids': jnp.asarray([[1] * 13 + [2] * 19] * 2),
          'positions': jnp.asarray([list(range(13)) + list(range(19))] * 2)}


GROWING = bd.BlockDiffusionOptions(block_size=16, grow_every=1, grow_from=4)


def _tiled_and_dense(batch, opts):
  """The loss batch with skip_tiles, and the same with the dense mask."""
  tiled = jax.jit(bd.make_loss_batch, static_argnames=('mask_id', 'options'))(
      batch, jax.random.key(0), 1, mask_id=MASK,
      options=dataclasses.replace(opts, skip_tiles=True))
  assert len(tiled.attention.tiles.pairs()) < (64 // opts.block_size) ** 2 * 0.7
  return tiled, tiled.replace(attention=tiled.attention.replace(tiles=None))


@pytest.mark.slow
@pytest.mark.parametrize('packed', [True, False])
def test_tile_skipping_loss_and_gradients_equal_the_dense_mask(tiny_config, tiny_params,
                                                               packed):
  """train.block.skip_tiles: the tiny model's block-diffusion loss and gradients
  through `attend`'s tile-skipping path equal the dense masked path (packed rows
  under a growing block size; one document per row under a fixed one). Slow
  (two whole-model gradient compiles); the default twin is
  `test_tile_skipping_attention_equals_dense`."""
  batch = _packed_rows()
  batch = batch if packed else {'tokens': batch['tokens']}
  opts = GROWING if packed else bd.BlockDiffusionOptions(block_size=8)
  tiled, dense = _tiled_and_dense(batch, opts)

  @jax.jit  # The static tile layout is part of the spec's tree: two compiles.
  def grad(params, lb):
    return jax.value_and_grad(lambda p: diffusion.loss_from_logits(model.forward(
        p, lb.inputs, positions=lb.positions, config=tiny_config,
        attention=lb.attention), lb))(params)
  (l_dense, g_dense), (l_tiled, g_tiled) = (grad(tiny_params, dense),
                                            grad(tiny_params, tiled))
  np.testing.assert_allclose(l_tiled, l_dense, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), g_tiled,
               g_dense)


def test_block_run_shares_the_ar_twins_shapes_and_checks_its_block_size():
  """train.init_from of a bidirectional run or of the AR twin loads parameters of
  the same shapes (the slow test below runs it); a block size that does not
  divide the row length is a one-line error."""
  from dllm_jax import tokenizers as tokenizer_lib  # pylint: disable=g-import-not-at-top
  from dllm_jax.training import run_checks, sections, trainer  # pylint: disable=g-import-not-at-top
  from tests import support  # pylint: disable=g-import-not-at-top
  tok = tokenizer_lib.make_tokenizer('byte')
  shapes = lambda c: jax.tree.map(lambda x: x.shape, model.abstract_params(
      trainer.model_config(c, tok)))
  block_run = support.small_config(objective='block_diffusion')
  cfg = trainer.model_config(block_run, tok)
  assert not cfg.causal
  assert shapes(block_run) == shapes(support.small_config(objective='next_token'))
  block_run.train.block.block_size = 12
  with pytest.raises(ValueError, match='block size 12 does not divide the row length 32'):
    run_checks.check_run(sections.RunConfig.of(block_run), cfg, tok)


@pytest.mark.slow
@pytest.mark.parametrize('source', ['next_token', 'pretrain'])
def test_block_diffusion_run_starts_from_the_ar_twin_or_a_bidirectional_run(
    tmp_path, source):
  """`train.init_from` the autoregressive twin or a full-sequence diffusion run:
  the block run starts from its parameters."""
  from dllm_jax.training import checkpoint, trainer  # pylint: disable=g-import-not-at-top
  from tests import support  # pylint: disable=g-import-not-at-top
  ar = support.small_config(objective=source, steps=2)
  ar.sample.num_samples = 0
  ar_state = trainer.train(ar, str(tmp_path / 'ar'))
  run = support.small_config(objective='block_diffusion', steps=2,
                             init_from=str(tmp_path / 'ar'))
  run.train.block.block_size = 8
  run.train.block.grow_every, run.train.block.grow_from = 1, 2
  # A learning rate far below float32's resolution of these parameters (0
  # is refused): two steps leave them bit for bit the loaded ones.
  run.optimizer.lr = 1e-30
  run.sample.num_samples = 1  # The end-of-run sample takes the block sampler.
  state = trainer.train(run, str(tmp_path / 'bd'))
  assert checkpoint.fingerprint(state.params) == checkpoint.fingerprint(ar_state.params)
  meta = checkpoint.read_meta(str(tmp_path / 'bd'))
  block.check_model(trainer.model_config(run), block.BlockSamplingConfig(
      block_length=8), meta)
