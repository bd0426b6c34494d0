"""Runs on 8 simulated CPU devices (tests/test_sharding.py starts it):
one train step on several meshes against one device, and the sampler sharded
against unsharded. Prints one JSON line of results.

  python -m tests.sharding_worker [all]

By default the 3-D mesh (2, 2, 2) only, which shards every axis, and remat +
scan + the one-hot embedding gradient in one step; `all`: every mesh of MESHES,
each variant on its own and the sampler on two meshes (tests/test_sharding.py,
-m slow).
"""

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 4, 2)]
SAMPLER_MESHES = [(2, 2, 2), (1, 1, 8)]


def main():
  every = sys.argv[1:] == ['all']
  jax.config.update('jax_platforms', 'cpu')
  jax.config.update('jax_num_cpu_devices', 8)
  from dllm_jax import models as presets  # pylint: disable=g-import-not-at-top
  from dllm_jax.models import llada  # pylint: disable=g-import-not-at-top
  from dllm_jax.parallel import mesh as mesh_lib, multihost, sharding  # pylint: disable=g-import-not-at-top
  from dllm_jax.sampling import generate as gen  # pylint: disable=g-import-not-at-top
  from dllm_jax.training import optimizer as opt_lib, train_step as ts  # pylint: disable=g-import-not-at-top

  cfg = presets.get_preset('tiny', d_model=64, n_heads=4, d_ff=128, max_len=64)
  opt, sched = opt_lib.make_optimizer(
      lr=1e-3, total_steps=10, warmup_steps=0, decay_fraction=0.0, final_lr_ratio=1.0,
      b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0)
  rng = np.random.default_rng(0)
  batch = {'tokens': rng.integers(0, 256, (8, 32)).astype(np.int32),
           'segment_ids': np.repeat([[1] * 20 + [2] * 12], 8, 0).astype(np.int32),
           'positions': np.tile(np.r_[np.arange(20), np.arange(12)], (8, 1)).astype(np.int32)}

  def one_step(shape, model_cfg=cfg):
    devices = jax.devices()[:int(np.prod(shape))]
    mesh = mesh_lib.make_mesh(*shape, devices=devices)
    with jax.set_mesh(mesh):
      init_fn = lambda k: ts.init_train_state(model_cfg, opt, k)
      abstract = jax.eval_shape(init_fn, jax.random.key(0))
      state_sh = sharding.state_shardings(abstract, mesh, llada.param_axes)
      state = jax.jit(init_fn, out_shardings=state_sh)(jax.random.key(0))
      batch_sh = sharding.batch_sharding(mesh)
      step = ts.make_train_step(model_cfg, opt, sched, state_shardings=state_sh,
                                batch_sharding=batch_sh)
      key = jax.device_put(jax.random.key(1), sharding.replicated(mesh))
      state, metrics = step(state, multihost.global_batch(batch, batch_sh), key)
      wq = state.params['blocks'][0]['q_proj']['kernel']
      return (float(metrics['loss']), jax.device_get(state.params),
              str(wq.sharding.spec), int(np.prod(wq.addressable_shards[0].data.shape)))

  ref_loss, ref_params, _, _ = one_step((1, 1, 1))
  out = {'ref_loss': ref_loss, 'meshes': {}}
  for shape in MESHES if every else [(2, 2, 2)]:
    loss, params, spec, shard_size = one_step(shape)
    diff = max(float(np.max(np.abs(a - b))) for a, b in
               zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)))
    out['meshes'][str(shape)] = {'loss': loss, 'max_param_diff': diff,
                                 'q_proj_spec': spec, 'q_proj_shard_elems': shard_size}
  # Remat + scan over layers and the one-hot embedding gradient on the 3-D mesh:
  # the same step. Together in one step by default (one compile fewer); each on
  # its own with `all`.
  variants = {'remat_scan': dict(remat='dots', scan_layers=True),
              'onehot_embed_grad': dict(embed_grad='onehot')}
  if not every:
    variants = {'remat_scan_onehot': {**variants['remat_scan'],
                                      **variants['onehot_embed_grad']}}
  for name, kw in variants.items():
    loss, params, _, _ = one_step((2, 2, 2), dataclasses.replace(cfg, **kw))
    out[name] = {'loss': loss, 'max_param_diff': max(
        float(np.max(np.abs(a - b))) for a, b in
        zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)))}

  # Sampler: the same tokens with parameters and batch on a mesh.
  params = jax.jit(lambda k: ts.init_train_state(cfg, opt, k).params)(jax.random.key(0))
  prompts = np.tile(np.arange(65, 73, dtype=np.int32), (4, 1))
  sampling = gen.SamplingConfig(steps=8, gen_length=16, block_length=8, temperature=0.0)
  want = np.asarray(gen.generate(params, prompts, jax.random.key(2), config=cfg,
                                 sampling=sampling))
  out['sampler'] = {}
  for shape in SAMPLER_MESHES if every else SAMPLER_MESHES[:1]:
    mesh = mesh_lib.make_mesh(*shape)
    with jax.set_mesh(mesh):
      sharded = jax.device_put(params, sharding.param_shardings(params, mesh,
                                                                 llada.param_axes))
      got = np.asarray(gen.generate(sharded, prompts, jax.random.key(2), config=cfg,
                                    sampling=sampling))
    out['sampler'][str(shape)] = bool(np.array_equal(got, want))
  print(json.dumps(out), flush=True)


if __name__ == '__main__':
  main()
