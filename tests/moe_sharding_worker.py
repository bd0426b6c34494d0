"""Runs on 8 simulated CPU devices (tests/test_moe_sharding.py starts it): one
llada2 train step on meshes with an `expert` axis (x data / fsdp / tensor)
against one device, whether the step exchanges tokens with all-to-all, and the
sampler on an expert mesh against one device. Prints one JSON line.

  python -m tests.moe_sharding_worker [all]

Without `all`: one mesh, expert x fsdp x tensor (the default test run's
budget); with it: every mesh below and the sampler.
"""

import json
import sys

import jax
import numpy as np

# (data, fsdp, tensor, expert)
MESHES = [(1, 2, 2, 2), (2, 1, 1, 4), (1, 2, 1, 4), (1, 1, 2, 4)]


def main():
  jax.config.update('jax_platforms', 'cpu')
  jax.config.update('jax_num_cpu_devices', 8)
  from dllm_jax import models  # pylint: disable=g-import-not-at-top
  from dllm_jax.parallel import mesh as mesh_lib, multihost, sharding  # pylint: disable=g-import-not-at-top
  from dllm_jax.sampling import generate as gen  # pylint: disable=g-import-not-at-top
  from dllm_jax.training import optimizer as opt_lib, train_step as ts  # pylint: disable=g-import-not-at-top

  cfg = models.get_preset('llada2_tiny', n_layers=2, max_len=64)
  axes = models.of(cfg).param_axes
  opt, sched = opt_lib.make_optimizer(
      lr=1e-3, total_steps=10, warmup_steps=0, decay_fraction=0.0, final_lr_ratio=1.0,
      b1=0.9, b2=0.95, weight_decay=0.1, clip_norm=1.0)
  rng = np.random.default_rng(0)
  batch = {'tokens': rng.integers(0, 256, (8, 16)).astype(np.int32)}

  def one_step(shape):
    d, f, t, e = shape
    mesh = mesh_lib.make_mesh(d, f, t, devices=jax.devices()[:d * f * t * e], expert=e)
    with jax.set_mesh(mesh):
      init_fn = lambda k: ts.init_train_state(cfg, opt, k)
      abstract = jax.eval_shape(init_fn, jax.random.key(0))
      state_sh = sharding.state_shardings(abstract, mesh, axes)
      state = jax.jit(init_fn, out_shardings=state_sh)(jax.random.key(0))
      batch_sh = sharding.batch_sharding(mesh)
      step = ts.make_train_step(cfg, opt, sched, state_shardings=state_sh,
                                batch_sharding=batch_sh)
      key = jax.device_put(jax.random.key(1), sharding.replicated(mesh))
      gbatch = multihost.global_batch(batch, batch_sh)
      hlo = step.lower(state, gbatch, key).compile().as_text() if e > 1 else ''
      state, metrics = step(state, gbatch, key)
      w = state.params['layers'][1]['moe']['experts']['gate_up']
      return (float(metrics['loss']), jax.device_get(state.params), str(w.sharding.spec),
              list(w.addressable_shards[0].data.shape), 'all-to-all' in hlo)

  everything = sys.argv[1:] == ['all']
  ref_loss, ref_params, _, _, _ = one_step((1, 1, 1, 1))
  out = {'ref_loss': ref_loss, 'meshes': {}}
  for shape in MESHES if everything else MESHES[:1]:
    loss, params, spec, shard, a2a = one_step(shape)
    diff = max(float(np.max(np.abs(np.asarray(a, np.float64) - b))) for a, b in
               zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)))
    out['meshes'][str(shape)] = {'loss': loss, 'max_param_diff': diff,
                                 'experts_spec': spec, 'experts_shard': shard,
                                 'all_to_all': a2a}

  if not everything:
    print(json.dumps(out), flush=True)
    return
  params = jax.jit(lambda k: ts.init_train_state(cfg, opt, k).params)(jax.random.key(0))
  prompts = np.tile(np.arange(65, 71, dtype=np.int32), (2, 1))
  sampling = gen.SamplingConfig(steps=4, gen_length=8, block_length=4, cache='dual')
  want = np.asarray(gen.generate(params, prompts, jax.random.key(2), config=cfg,
                                 sampling=sampling))
  mesh = mesh_lib.make_mesh(1, 1, 2, expert=4)
  with jax.set_mesh(mesh):
    sharded = jax.device_put(params, sharding.param_shardings(params, mesh, axes))
    got = np.asarray(gen.generate(sharded, prompts, jax.random.key(2), config=cfg,
                                  sampling=sampling))
  out['sampler'] = bool(np.array_equal(got, want))
  print(json.dumps(out), flush=True)


if __name__ == '__main__':
  main()
