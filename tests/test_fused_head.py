"""The fused head + candidate Pallas kernel (interpret mode on CPU) equals the
head matmul followed by the candidate twin; the dispatcher keeps the unfused
path unless asked."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax.kernels import fused
from dllm_jax.kernels import fused_head as fh

SEED = fused.seed_from_key(jax.random.key(7))


def _inputs(r, d, v):
  """bf16 hidden states [r, d] and head [d, v] giving logits of scale ~3."""
  rng = np.random.default_rng(0)
  h = rng.standard_normal((r, d)).astype(jnp.bfloat16)
  w = (rng.standard_normal((d, v)) * 3 * d ** -0.5).astype(jnp.bfloat16)
  return h, w


def _jit(fn, *args, **kw):
  """fn(*args, **kw) compiled as one program (eager ops compile one by one)."""
  return jax.jit(functools.partial(fn, **kw))(*args)


def _check(r, d, v, shape, **kw):
  h, w = _inputs(r, d, v)
  want = _jit(fh.head_candidates_jnp, h, w, SEED, **kw)
  got = _jit(fh.head_candidates_pallas, h, w, SEED, interpret=True,
             kernel=fh.HeadKernelConfig.parse(shape), **kw)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
  return np.asarray(got[0])


def test_kernel_equals_twin_ragged_with_noise():
  # 19 rows, D 40, vocabulary 300: none a multiple of the 16 x 64 x 16 tiles;
  # 3 vocabulary splits of 2 tiles, the last overhanging the vocabulary.
  cand = _check(19, 40, 300, '16:64:16:3:4', temperature=1.0, mask_id=3, eos_id=9,
                logits_dtype=jnp.bfloat16)
  assert not np.isin(cand, [3, 9]).any()  # Mask and EOS never win.


def test_dispatcher_kernel_equals_unfused_path_with_ties():
  """One-hot hidden states pick rows of the head as logits: exact ties across
  tiles go to the first column, as in jnp.argmax. Without `interpret` the
  dispatcher runs the head matmul and `fused.candidates`: by default (no rows
  range measured yet) and here, without a GPU, even when asked to fuse."""
  d, v = 64, 200  # D: a multiple of the default k_tile (plain loads).
  w = np.zeros((d, v), np.float32)  # Row 0: all tied (the first allowed column).
  w[1, [10, 150]] = 2.0  # Equal maxima in different tiles.
  w[2, 199] = 1.0  # The last column, in the tail tile.
  w[3] = np.random.default_rng(1).standard_normal(v)
  w = w.astype(jnp.bfloat16)
  hidden = np.eye(d, dtype=jnp.bfloat16)[[[0, 1], [2, 3]]]  # [2, 2, d]
  kw = dict(temperature=0.0, mask_id=0, logits_dtype=jnp.bfloat16)
  got = _jit(fh.head_candidates, hidden, w, SEED, interpret=True, **kw)
  assert got[0].shape == (2, 2)
  assert list(np.asarray(got[0]).ravel()[:3]) == [1, 10, 199]
  for fuse in (None, True):
    want = _jit(fh.head_candidates, hidden, w, SEED, fuse=fuse, **kw)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6)
  assert fh.HEAD_KERNEL_ROWS[0] > fh.HEAD_KERNEL_ROWS[1]  # Unmeasured: never.


def test_head_kernel_config_parses_and_rejects_bad_shapes():
  kc = fh.HeadKernelConfig.parse('32:256:64:0:8')
  assert (kc.rows, kc.tile, kc.k_tile, kc.splits, kc.num_warps, kc.num_stages) == (
      32, 256, 64, 0, 8, 3)
  assert fh.HeadKernelConfig.parse(kc.name()) == kc
  with pytest.raises(ValueError, match='rows:tile:k_tile:splits:warps'):
    fh.HeadKernelConfig.parse('32:256')
  h, w = _inputs(4, 16, 64)
  with pytest.raises(ValueError, match='tile=96 is not a power of two'):
    fh.head_candidates_pallas(h, w, SEED, temperature=0.0, mask_id=3, interpret=True,
                              kernel=fh.HeadKernelConfig(tile=96))
  with pytest.raises(ValueError, match='does not take hidden states'):
    fh.head_candidates_pallas(h, w.T, SEED, temperature=0.0, mask_id=3, interpret=True)


@pytest.mark.slow
@pytest.mark.parametrize('shape', ['16:64:16:0:4', '32:128:32:1:4', '16:32:32:2:4'])
@pytest.mark.parametrize('temperature', [0.0, 0.7])
@pytest.mark.parametrize('logits_dtype', [None, jnp.bfloat16])
def test_kernel_equals_twin_over_shapes(shape, temperature, logits_dtype):
  for r, d, v in ((21, 48, 1000), (32, 64, 512)):
    _check(r, d, v, shape, temperature=temperature, mask_id=3, logits_dtype=logits_dtype)


@pytest.mark.slow
def test_head_kernel_probe_runs_inside_a_jit_trace():
  probe = fh._probe  # pylint: disable=protected-access
  jax.jit(lambda x: (probe(interpret=True), x)[1])(jnp.zeros(()))


def test_kernel_lowers_to_triton_for_cuda_at_the_llada_shape():
  """Lowering for a GPU (no GPU needed: Pallas emits Triton IR on this CPU)
  catches what interpret mode cannot, e.g. Triton's load taking `other` only
  with a mask. Hidden [33, D] x head [D, 126,464], D a multiple of k_tile and not,
  in the default and the benchmarked launch shapes."""
  seed = jax.ShapeDtypeStruct((2,), jnp.uint32)
  shapes = [fh.HeadKernelConfig(), fh.HeadKernelConfig.parse('32:256:64:0:4')]
  for d, kc in ((4096, shapes[0]), (4000, shapes[0]), (4096, shapes[1])):
    h = jax.ShapeDtypeStruct((33, d), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((d, 126_464), jnp.bfloat16)
    fn = functools.partial(fh.head_candidates_pallas, temperature=1.0, mask_id=5,
                           eos_id=7, logits_dtype=jnp.bfloat16, kernel=kc)
    text = jax.jit(fn).trace(h, w, seed).lower(lowering_platforms=('cuda',)).as_text()
    assert 'triton' in text
