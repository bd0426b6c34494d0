"""Who attends to whom: one value, `AttentionSpec`, and one function that runs it.

Objectives and samplers say what a batch's attention is (documents packed in a
row, causal, block-causal, a truncation, a window of queries against a cache);
every model family hands the spec to `attend`, which picks the fastest kernel
path that computes it:

  * nothing but causality and key lengths: `jax.nn.dot_product_attention` with
    `is_causal` / `key_value_seq_lengths` and no mask (cuDNN's unmasked flash
    kernels on a GPU);
  * documents packed in a row (segments and nothing else) with
    implementation 'cudnn_packed': cuDNN's packed (ragged) layout, one flash
    attention per document and no mask (Hopper or newer; rows whose documents
    do not fit its static count take the masked path, see `attend_packed`);
  * anything else (segments, blocks, an explicit mask, a query window that is
    not the whole sequence): one boolean mask [B, 1, Q, K] built here.

Positions in a spec are sequence indices (0..T-1 of the keys), not RoPE
positions: blocks of a block-causal spec start at index 0 (LLaDA2 aligns them
with the start of the prompt, not of the answer).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

IMPLEMENTATIONS = (None, 'xla', 'cudnn', 'cudnn_packed')
# The most documents one row may hold on the packed cuDNN path: a static shape
# (cuDNN's per-segment softmax statistics are [B * MAX_SEGMENTS, H, T]); a batch
# with a row over it takes the masked path instead.
MAX_SEGMENTS = 16


@flax.struct.dataclass
class AttentionSpec:
  """Query i may attend key j when every stated rule allows it.

  segment_ids: [B, T] int or None: only keys of the query's own segment (packed
    documents; padding shares segment 0 with other padding).
  kv_lengths: [B] int or None: only keys j < kv_lengths[b] (a truncation that
    keeps the unmasked fast path).
  mask: [B, 1, T, T] bool or None: an explicit extra rule (ANDed), for patterns
    the named rules do not cover.
  causal: only keys j <= i (static).
  block_size: > 0: block-causal, only keys j with j // block_size <= i //
    block_size: bidirectional inside a block, causal across blocks (static).
  """

  segment_ids: jax.Array | None = None
  kv_lengths: jax.Array | None = None
  mask: jax.Array | None = None
  causal: bool = flax.struct.field(pytree_node=False, default=False)
  block_size: int = flax.struct.field(pytree_node=False, default=0)
  # A `block_sparse.TileLayout` or None (static): attention over full rows then
  # computes only the (query tile, key tile) pairs it lists (block diffusion's
  # [x_t, x_0] mask); the mask still applies inside each tile.
  tiles: Any = flax.struct.field(pytree_node=False, default=None)

  def __post_init__(self):
    if self.block_size < 0:
      raise ValueError(f'block_size must be >= 0, got {self.block_size}.')
    if self.causal and self.block_size:
      raise ValueError('an attention spec is causal or block-causal, not both '
                       '(causal is block-causal with block_size=1).')

  @property
  def needs_mask(self) -> bool:
    """Whether the full-sequence attention needs an explicit mask."""
    return (self.segment_ids is not None or self.mask is not None or
            self.block_size > 0)


def bidirectional(**kw) -> AttentionSpec:
  return AttentionSpec(**kw)


def causal(**kw) -> AttentionSpec:
  return AttentionSpec(causal=True, **kw)


def block_causal(block_size: int, **kw) -> AttentionSpec:
  if block_size <= 0:
    raise ValueError(f'block_size must be positive, got {block_size}.')
  return AttentionSpec(block_size=block_size, **kw)


def build_mask(spec: AttentionSpec, q_len: int, k_len: int,
               q_start: jax.Array | int = 0) -> jax.Array | None:
  """The boolean mask [B or 1, 1, Q, K] of queries [q_start, q_start + Q) over
  keys [0, K), every rule of the spec included; None when nothing is masked."""
  q = q_start + jnp.arange(q_len)[:, None]
  k = jnp.arange(k_len)[None, :]
  allowed = None

  def both(a, b):
    return b if a is None else a & b

  if spec.causal:
    allowed = both(allowed, (k <= q)[None, None])
  if spec.block_size:
    bs = spec.block_size
    allowed = both(allowed, (k // bs <= q // bs)[None, None])
  if spec.segment_ids is not None:
    seg = spec.segment_ids
    q_seg = jax.lax.dynamic_slice_in_dim(seg, q_start, q_len, axis=1)
    allowed = both(allowed, (q_seg[:, :, None] == seg[:, None, :])[:, None])
  if spec.kv_lengths is not None:
    allowed = both(allowed, (k[None] < spec.kv_lengths[:, None, None])[:, None])
  if spec.mask is not None:
    m = jax.lax.dynamic_slice_in_dim(spec.mask, q_start, q_len, axis=2)
    allowed = both(allowed, m)
  return allowed


def choose_implementation(requested: str | None, dtype: str, head_dim: int) -> str:
  """`jax.nn.dot_product_attention`'s implementation: the requested one, or cuDNN
  on a GPU with 16-bit compute and a head dim it supports, else XLA. (JAX's own
  default, None, always means XLA.)"""
  if requested is not None:
    return requested
  if (jax.default_backend() == 'gpu' and dtype == 'bfloat16'
      and head_dim % 8 == 0 and head_dim <= 128):
    return 'cudnn'
  return 'xla'


def attend(q: jax.Array, k: jax.Array, v: jax.Array, spec: AttentionSpec, *,
           q_start: jax.Array | int | None = None,
           implementation: str = 'xla') -> jax.Array:
  """Scaled dot-product attention under `spec`.

  Args:
    q: [B, Q, Hq, D]; k, v: [B, K, Hkv, D] with Hkv dividing Hq (grouped-query
      attention: query head h reads key/value head h // (Hq / Hkv)).
    spec: the rules; its arrays cover the K keys.
    q_start: None when the queries are the keys' own positions (Q == K);
      otherwise the key index of the first query (a window against a cache).
    implementation: 'xla', 'cudnn' or 'cudnn_packed' (`choose_implementation`;
      'cudnn_packed' is 'cudnn' but for specs of segments alone).

  Returns:
    [B, Q, Hq, D].
  """
  if implementation == 'xla' and spec.tiles is not None and q_start is None:
    # Skip the tiles the mask rules out (measured on XLA's attention on CPU;
    # cuDNN's masked flash kernel keeps its own path, unmeasured against this).
    from dllm_jax.kernels import block_sparse  # pylint: disable=g-import-not-at-top
    return block_sparse.attend_layout(q, k, v, build_mask(spec, q.shape[1], k.shape[1]),
                                      spec.tiles)
  if implementation == 'cudnn_packed':
    if (q_start is None and spec.segment_ids is not None and spec.mask is None
        and not spec.block_size and not spec.causal and spec.kv_lengths is None
        and spec.tiles is None):
      return attend_packed(q, k, v, spec.segment_ids)
    implementation = 'cudnn'
  if q_start is None:
    # Causality and key lengths go to the kernel as flags (no mask tensor: the
    # unmasked fast path when nothing else is asked); only the other rules
    # become a mask.
    rest = spec.replace(causal=False, kv_lengths=None)
    mask = build_mask(rest, q.shape[1], k.shape[1]) if spec.needs_mask else None
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, is_causal=spec.causal,
        key_value_seq_lengths=spec.kv_lengths, implementation=implementation)
  mask = build_mask(spec, q.shape[1], k.shape[1], q_start)
  return jax.nn.dot_product_attention(q, k, v, mask=mask,
                                      implementation=implementation)


def packed_layout(segment_ids: jax.Array, max_segments: int = MAX_SEGMENTS):
  """cuDNN's packed description of rows made of runs of equal segment ids.

  Args:
    segment_ids: [B, T] int.
    max_segments: M, the static number of runs a row may have.

  Returns:
    (seqlens [B, M], offsets [B, M + 1], fits []): run lengths and run starts
    (token index in the row), -1 past each row's run count; `fits` is true when
    every row has at most M runs and no id appears in two runs (then one
    attention per run equals the segment mask exactly; padding, one run of id 0,
    attends to itself as it does under the mask).
  """
  b, t = segment_ids.shape
  m = min(max_segments, t)
  pos = jnp.arange(t, dtype=jnp.int32)
  new = jnp.concatenate([jnp.ones((b, 1), bool),
                         segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  runs = new.sum(axis=1, dtype=jnp.int32)  # [B]
  srt = jnp.sort(segment_ids, axis=1)
  distinct = 1 + jnp.sum(srt[:, 1:] != srt[:, :-1], axis=1, dtype=jnp.int32)
  starts = jnp.sort(jnp.where(new, pos, t), axis=1)[:, :m]  # [B, m], t past `runs`
  idx = jnp.arange(m, dtype=jnp.int32)[None]
  live = idx < runs[:, None]
  ends = jnp.concatenate([starts[:, 1:], jnp.full((b, 1), t, jnp.int32)], axis=1)
  ends = jnp.where(idx + 1 < runs[:, None], ends, t)
  seqlens = jnp.where(live, ends - starts, -1).astype(jnp.int32)
  offsets = jnp.concatenate([jnp.where(live, starts, -1),
                             jnp.full((b, 1), -1, jnp.int32)], axis=1).astype(jnp.int32)
  fits = jnp.all((runs <= m) & (runs == distinct))
  return seqlens, offsets, fits


def attend_packed(q: jax.Array, k: jax.Array, v: jax.Array,
                  segment_ids: jax.Array,
                  max_segments: int = MAX_SEGMENTS) -> jax.Array:
  """Bidirectional attention within each document of packed rows on cuDNN's
  packed layout (no [B, 1, T, T] mask: each document is its own flash
  attention). Falls back, by `lax.cond`, to the masked cuDNN path when a row has
  more than `max_segments` documents or an id split over two runs.

  q: [B, T, Hq, D]; k, v: [B, T, Hkv, D]; segment_ids: [B, T]. Returns [B, T, Hq, D].
  """
  # A private JAX entry point: jax.nn.dot_product_attention has no packed form.
  from jax._src.cudnn import fused_attention_stablehlo as cudnn_fa  # pylint: disable=g-import-not-at-top
  seqlens, offsets, fits = packed_layout(segment_ids, max(2, max_segments))

  def packed(q, k, v):
    return cudnn_fa.dot_product_attention(
        q, k, v, q_seqlen=seqlens, kv_seqlen=seqlens, q_offsets=offsets,
        kv_offsets=offsets, scale=float(q.shape[-1]) ** -0.5,
        mask_type=cudnn_fa.MaskType.NO_MASK, qkv_layout='BTNH')

  def masked(q, k, v):
    mask = build_mask(AttentionSpec(segment_ids=segment_ids), q.shape[1], k.shape[1])
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation='cudnn')

  return jax.lax.cond(fits, packed, masked, q, k, v)
