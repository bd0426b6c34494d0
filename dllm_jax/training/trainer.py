"""The training loop: config -> model, data, optimizer -> steps -> checkpoints.

Run it again with the same workdir and it resumes from the latest checkpoint,
with the data iterator where it stopped and the same masking noise per step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dllm_jax import flops, models, presets
from dllm_jax.model import abstract_params
from dllm_jax.data import pipeline, sft as sft_lib, sources
from dllm_jax.data import tokenizer as tokenizer_lib
from dllm_jax.sampling import generate as gen
from dllm_jax.errors import NonFiniteError
from dllm_jax.training import checkpoint, optimizer as optimizer_lib, preemption
from dllm_jax.parallel import mesh as mesh_lib, multihost, sharding
from dllm_jax.training import provenance, train_step as ts

_SHAPE_KEYS = ('d_model', 'n_layers', 'n_heads', 'd_ff', 'max_len')
_COMPUTE_KEYS = ('attention_impl', 'remat', 'scan_layers', 'embed_grad')
OBJECTIVES = ('pretrain', 'sft', 'next_token', 'block_diffusion')


def model_config(config: ml_collections.ConfigDict,
                 tokenizer: tokenizer_lib.Tokenizer | None = None):
  """The model config a training config asks for (`causal` follows the objective).

  The preset names the family (`models.preset_family`); the config's shape and
  compute keys override the preset's fields where the family has them (a key the
  family does not have must stay unset). A byte-vocabulary preset (tiny, small)
  used with another tokenizer takes that tokenizer's special ids and its
  vocabulary size rounded up to a multiple of 128.
  """
  m = config.model
  family = models.preset_family(m.preset)
  fields = {f.name for f in dataclasses.fields(family.config_cls)}
  overrides = {k: m[k] for k in _SHAPE_KEYS + _COMPUTE_KEYS if m[k] is not None}
  overrides.update(dtype=m.dtype, param_dtype=m.param_dtype,
                   causal=config.train.objective == 'next_token')
  foreign = {k for k in overrides if k not in fields}
  defaults = dict(causal=False, remat='none', scan_layers=False, embed_grad='scatter',
                  dtype='float32', param_dtype='float32')
  bad = sorted(k for k in foreign if overrides[k] != defaults.get(k))
  if bad:
    raise ValueError(f'model.{bad[0]} is not a field of the {family.name!r} family '
                     f'(preset {m.preset!r}).')
  overrides = {k: v for k, v in overrides.items() if k in fields}
  overrides.update(presets.tokenizer_overrides(m.preset, tokenizer))
  return presets.get_preset(m.preset, **overrides)


def validate(config: ml_collections.ConfigDict, model_cfg: presets.ModelConfig,
             tokenizer: tokenizer_lib.Tokenizer) -> None:
  """One-line ValueErrors for settings that cannot work together."""
  t = config.train
  if t.objective not in OBJECTIVES:
    raise ValueError(f'unknown train.objective {t.objective!r}; known: {OBJECTIVES}.')
  sources.parse_spec(config.data.source)
  if t.objective == 'block_diffusion':
    block_options(config).validate(config.data.seq_len)
  if config.data.source == 'stdlib' and t.objective == 'sft':
    raise ValueError("train.objective='sft' needs chat examples (prompt/response "
                     "records); the built-in corpus is pretraining text. See "
                     "launch/configs/sft.py.")
  if config.data.packing not in pipeline.PACKINGS:
    raise ValueError(f'unknown data.packing {config.data.packing!r}; known: '
                     f'{pipeline.PACKINGS}.')
  if t.batch_size % jax.process_count():
    raise ValueError(f'train.batch_size={t.batch_size} is not divisible by the '
                     f'{jax.process_count()} processes.')
  for name in ('steps', 'batch_size', 'grad_accum_steps', 'log_every',
               'checkpoint_every'):
    if t[name] <= 0:
      raise ValueError(f'train.{name} must be positive, got {t[name]}.')
  if t.nonfinite not in ts.NONFINITE_POLICIES:
    raise ValueError(f'unknown train.nonfinite {t.nonfinite!r}; known: '
                     f'{ts.NONFINITE_POLICIES}.')
  if t.batch_size % t.grad_accum_steps:
    raise ValueError(f'train.batch_size={t.batch_size} is not divisible by '
                     f'train.grad_accum_steps={t.grad_accum_steps}.')
  if config.data.seq_len > model_cfg.max_len:
    raise ValueError(f'data.seq_len={config.data.seq_len} exceeds the model max_len '
                     f'{model_cfg.max_len}.')
  if (tokenizer.vocab_size > model_cfg.vocab_size or
      tokenizer.special_ids != model_cfg.ids):
    raise ValueError(f'model preset {config.model.preset!r} does not match the '
                     f'{tokenizer.name} tokenizer (vocab {tokenizer.vocab_size}, '
                     f'mask id {tokenizer.mask_id}); use a byte-vocabulary preset '
                     '(tiny, small), which adapts to any tokenizer.')


def block_options(config: ml_collections.ConfigDict):
  """`block_diffusion.BlockDiffusionOptions` of `config.train.block`."""
  from dllm_jax import block_diffusion  # pylint: disable=g-import-not-at-top
  return block_diffusion.BlockDiffusionOptions(**config.train.block.to_dict())


def check_parallel(config: ml_collections.ConfigDict, model_cfg: presets.ModelConfig,
                   mesh: jax.sharding.Mesh) -> None:
  """One-line ValueErrors for a batch or model that does not fit the mesh."""
  t = config.train
  dp = mesh_lib.data_parallel_size(mesh)
  micro = t.batch_size // t.grad_accum_steps
  if micro % dp:
    raise ValueError(
        f'train.batch_size={t.batch_size} (microbatches of {micro} with '
        f'grad_accum_steps={t.grad_accum_steps}) is not divisible by the data-parallel '
        f'size mesh.data x mesh.fsdp = {mesh.shape["data"]} x {mesh.shape["fsdp"]} '
        f'= {dp}.')
  models.of(model_cfg).check_mesh(model_cfg, dict(mesh.shape))


def _abstract_batch(config: ml_collections.ConfigDict, batch_sharding) -> dict:
  b, l = config.train.batch_size, config.data.seq_len
  spec = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sharding)
  if config.train.objective == 'sft':
    return {'tokens': spec(b, l), 'prompt_lengths': spec(b)}
  if config.data.packing == 'stream':
    return {'tokens': spec(b, l)}
  return {'tokens': spec(b, l), 'segment_ids': spec(b, l), 'positions': spec(b, l)}


def _gib(n: int) -> str:
  return f'{n / 2**30:.3f} GiB'


def make_dataset(config: ml_collections.ConfigDict, tokenizer, *,
                 split: str = 'train', num_epochs: int | None = None,
                 batch_size: int | None = None):
  """The Grain dataset the config asks for, this process's shard of it.

  `batch_size` is per process (default: train.batch_size / process count).
  """
  d = config.data
  common = dict(seq_len=d.seq_len, seed=config.seed, split=split,
                data_dir=d.data_dir, num_epochs=num_epochs,
                batch_size=batch_size or config.train.batch_size // jax.process_count(),
                shard_index=jax.process_index(), shard_count=jax.process_count(),
                num_workers=d.num_workers, record_format=d.record_format)
  if config.train.objective == 'sft':
    return pipeline.sft_dataset(d.source, tokenizer, prompt_field=d.prompt_field,
                                response_field=d.response_field, **common)
  return pipeline.pretrain_dataset(d.source, tokenizer, packing=d.packing,
                                   text_field=d.text_field, **common)


def _log(msg: str) -> None:
  print(msg, flush=True)


def _summary_writer(workdir: str):
  if jax.process_index() != 0:
    return None
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  return SummaryWriter(os.path.join(workdir, 'tensorboard'))


def _fmt_time(seconds: float) -> str:
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def sample_text(params, model_cfg: presets.ModelConfig, tokenizer,
                prompt: str, sampling: gen.SamplingConfig, key: jax.Array,
                num_samples: int = 1, chat: bool = False) -> list[str]:
  """Prompt text -> completions. The prompt is encoded after a BOS token, or as
  a user turn of the SFT chat format when `chat`."""
  ids = (sft_lib.prompt_ids(tokenizer, [{'role': 'user', 'content': prompt}])
         if chat else tokenizer.encode(prompt, add_bos=True))
  if not isinstance(sampling, gen.SamplingConfig):  # A block-diffusion run.
    from dllm_jax.sampling import block  # pylint: disable=g-import-not-at-top
    out = block.generate(params, np.tile(ids, (num_samples, 1)), key,
                         config=model_cfg, sampling=sampling)
    return [tokenizer.decode(row[:n]) for row, n in
            zip(np.asarray(out.tokens), np.asarray(out.lengths))]
  tokens = gen.generate(params, np.tile(ids, (num_samples, 1)), key, config=model_cfg,
                        sampling=sampling)
  if jax.process_count() > 1:  # A global array: every host gets all rows.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    tokens = multihost_utils.process_allgather(tokens, tiled=True)
  return [tokenizer.decode(row[len(ids):]) for row in np.asarray(tokens)]


def _check_finite(state: ts.TrainState, last_saved: int | None) -> None:
  """Raises NonFiniteError if the guard recorded a non-finite step (host sync)."""
  g = jax.device_get(state.guard)
  if g['first_bad_step'] < 0:
    return
  metric = 'loss' if not np.isfinite(g['bad_loss']) else 'grad_norm'
  kept = ('no checkpoint was written' if last_saved is None else
          f'the last good checkpoint (step {last_saved}) is kept')
  raise NonFiniteError(
      f'non-finite {metric} at step {int(g["first_bad_step"]) + 1} (loss '
      f'{g["bad_loss"]}, grad_norm {g["bad_grad_norm"]}); stopped without saving, '
      f'{kept}. Set train.nonfinite=skip to skip such updates instead.')


def _batch_fingerprint(batch: dict[str, np.ndarray]) -> str:
  return hashlib.sha1(np.ascontiguousarray(batch['tokens']).tobytes()).hexdigest()[:16]


def _init_params_from(init_from: str, model_cfg: presets.ModelConfig, tokenizer,
                      params_shardings):
  """Parameters of another run's latest checkpoint, checked against this run."""
  meta = checkpoint.read_meta(init_from)
  diffs = tokenizer_lib.vocab_differences(meta['tokenizer'], tokenizer.to_dict())
  if diffs:
    raise ValueError(f'train.init_from={init_from!r} used another tokenizer ({diffs}).')
  theirs = models.config_from_dict(meta['model_config'])
  shapes = lambda cfg: {jax.tree_util.keystr(p): x.shape for p, x in
                        jax.tree_util.tree_flatten_with_path(abstract_params(cfg))[0]}
  mine, other = shapes(model_cfg), shapes(theirs)
  bad = [f'{k} {other.get(k)} -> {v}' for k, v in mine.items() if other.get(k) != v]
  bad += [f'{k} {v} -> None' for k, v in other.items() if k not in mine]
  if type(theirs).family != type(model_cfg).family:
    bad.insert(0, f'family {type(theirs).family} -> {type(model_cfg).family}')
  if bad:
    raise ValueError(f'train.init_from={init_from!r} has another model shape '
                     f'({", ".join(bad[:6])}{", ..." if len(bad) > 6 else ""}).')
  return checkpoint.restore_for_inference(init_from, shardings=params_shardings).params


def train(config: ml_collections.ConfigDict, workdir: str, *,
          stop_after: int | None = None) -> ts.TrainState:
  """Trains (or resumes) and returns the final state.

  The state lives on the mesh of `config.mesh` (sharded by the logical-axis
  rules of `parallel/sharding.py`, initialised in place); each process feeds its
  shard of the data into the global batch. `stop_after`: end (with a checkpoint)
  once this step is done, as if the job were interrupted there; the schedule
  still spans `train.steps`. On SIGTERM (JAX's preemption sync point on several
  hosts) the current step finishes, a checkpoint is written and waited for, and
  the function returns.
  """
  tokenizer = tokenizer_lib.make_tokenizer(config.data.tokenizer)
  model_cfg = model_config(config, tokenizer)
  validate(config, model_cfg, tokenizer)
  mesh = mesh_lib.from_config(config.mesh)
  check_parallel(config, model_cfg, mesh)
  with jax.set_mesh(mesh):
    return _train(config, workdir, stop_after, tokenizer, model_cfg, mesh)


def _train(config, workdir, stop_after, tokenizer, model_cfg, mesh) -> ts.TrainState:
  t, o = config.train, config.optimizer
  os.makedirs(workdir, exist_ok=True)
  _log('config:\n' + json.dumps(config.to_dict(), indent=1, sort_keys=True))
  _log(f'model: {model_cfg.num_params() / 1e6:.2f}M parameters, '
       f'{models.config_to_dict(model_cfg)}')
  _log(f'mesh: {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].device_kind} '
       f'device(s) in {jax.process_count()} process(es)')
  record = provenance.run_record(config.to_dict(), model_cfg, tokenizer)

  optimizer, schedule = optimizer_lib.make_optimizer(
      lr=o.lr, total_steps=t.steps, warmup_steps=o.warmup_steps,
      decay_fraction=o.decay_fraction, final_lr_ratio=o.final_lr_ratio, b1=o.b1,
      b2=o.b2, weight_decay=o.weight_decay, clip_norm=o.clip_norm)
  data_iter = iter(make_dataset(config, tokenizer))

  key = jax.random.key(config.seed)
  init_key, step_key, sample_key = jax.random.split(key, 3)
  init_fn = lambda k: ts.init_train_state(model_cfg, optimizer, k)
  state_abstract = jax.eval_shape(init_fn, init_key)
  state_sh = sharding.state_shardings(state_abstract, mesh,
                                      models.of(model_cfg).param_axes)
  init = jax.jit(init_fn, out_shardings=state_sh)  # Each shard made in place.
  mngr = checkpoint.make_manager(workdir, max_to_keep=t.max_to_keep)
  abstract = sharding.with_shardings(state_abstract, state_sh)
  restored = checkpoint.restore_latest_good(
      mngr, workdir, abstract, data_iter,
      check_meta=lambda meta: provenance.check_resume(meta, record))
  if restored is None:
    state, last_saved = init(init_key), None
    if t.init_from:
      state = state.replace(params=_init_params_from(t.init_from, model_cfg, tokenizer,
                                                     state_sh.params))
      _log(f'starting in {workdir} from the parameters of {t.init_from}')
    else:
      _log(f'starting from scratch in {workdir}')
  else:
    last_saved, params, opt_state, saved = restored
    for change in provenance.check_resume(saved, record):
      _log(f'config change since the checkpoint (allowed): {change}')
    state = ts.TrainState(
        step=jax.device_put(jnp.asarray(last_saved, jnp.int32), state_sh.step),
        params=params, opt_state=opt_state,
        guard=jax.device_put(ts.fresh_guard(saved.get('skipped_updates', 0)),
                             state_sh.guard))
    _log(f'resumed from step {last_saved} of {checkpoint.checkpoint_dir(workdir)}')

  batch_sh = sharding.batch_sharding(mesh)
  step_key = jax.device_put(step_key, sharding.replicated(mesh))
  t0 = time.time()
  train_step = ts.make_train_step(
      model_cfg, optimizer, schedule, objective=t.objective,
      grad_accum_steps=t.grad_accum_steps, random_length_prob=t.random_length_prob,
      stratified_t=t.stratified_t, nonfinite=t.nonfinite,
      debug_nan_step=t.debug_nan_step, state_shardings=state_sh,
      batch_sharding=batch_sh,
      block_options=block_options(config) if t.objective == 'block_diffusion' else None).lower(abstract, _abstract_batch(config, batch_sh),
                                     step_key).compile()
  mem = train_step.memory_analysis()
  _log(f'train step compiled in {time.time() - t0:.1f} s' + (
      '' if mem is None else
      f'; per device: arguments {_gib(mem.argument_size_in_bytes)}, outputs '
      f'{_gib(mem.output_size_in_bytes)}, temporaries {_gib(mem.temp_size_in_bytes)}'))
  flops_per_step = (flops.train_flops_per_token(model_cfg, config.data.seq_len) *
                    t.batch_size * config.data.seq_len)
  peak = flops.peak_flops(jax.devices()[0].device_kind)
  writer = _summary_writer(workdir)
  batch_log = (open(os.path.join(workdir, 'batches.txt'), 'a')
               if t.record_batches and jax.process_index() == 0 else None)
  watcher = preemption.PreemptionWatcher()
  tokens_per_step = t.batch_size * config.data.seq_len
  start = int(state.step)
  window_start, window_step, run_start = time.time(), start, time.time()

  def save(step):
    nonlocal last_saved
    _check_finite(state, last_saved)  # Never save a state past a bad step.
    skipped = int(jax.device_get(state.guard['skipped']))
    checkpoint.save(mngr, step, state, data_iter,
                    checkpoint.make_meta(step, {**record, 'skipped_updates': skipped}))
    last_saved = step

  end = t.steps if stop_after is None else min(stop_after, t.steps)
  try:
    for step in range(start, end):
      batch = next(data_iter)
      state, metrics = train_step(state, multihost.global_batch(batch, batch_sh),
                                  step_key)
      done = step + 1
      if batch_log is not None:
        batch_log.write(f'{done} {_batch_fingerprint(batch)}\n')
        batch_log.flush()
      if done % t.log_every == 0 or done == end:
        _check_finite(state, last_saved)
        metrics = jax.device_get(metrics)  # Host syncs only here and at saves.
        now = time.time()
        steps_s = (done - window_step) / (now - window_start)
        tok_s = tokens_per_step * steps_s
        perf = {'tokens_per_second': tok_s,
                'tokens_per_second_per_device': tok_s / jax.device_count(),
                'tflops_per_device': flops_per_step * steps_s / jax.device_count() / 1e12}
        mfu = ''
        if peak is not None:
          perf['mfu'] = perf['tflops_per_device'] * 1e12 / peak
          mfu = f', MFU {100 * perf["mfu"]:.1f}%'
        eta = (now - run_start) / (done - start) * (t.steps - done)
        _log(f'step {done}/{t.steps}  loss {metrics["loss"]:.4f}  '
             f'grad_norm {metrics["grad_norm"]:.3f}  lr {metrics["learning_rate"]:.2e}  '
             f'{tok_s:,.0f} tokens/s ({perf["tokens_per_second_per_device"]:,.0f}/device, '
             f'{perf["tflops_per_device"]:.3g} TFLOP/s/device{mfu})  '
             f'left {_fmt_time(eta)}')
        if writer is not None:
          for name, value in {**metrics, **perf}.items():
            writer.add_scalar(f'train/{name}', float(value), done)
          writer.flush()
        window_start, window_step = time.time(), done
      if done % t.checkpoint_every == 0 or done == end:
        save(done)
      if watcher.should_stop(done):
        if last_saved != done:
          save(done)
        mngr.wait_until_finished()  # Before the message: the save is complete.
        _log(f'stopped by {watcher.signal_name} after step {done}: checkpoint saved '
             f'in {checkpoint.checkpoint_dir(workdir)}; rerun the same command to '
             'resume.')
        return state
  finally:
    mngr.wait_until_finished()  # On every exit, errors included: finish saves.
    watcher.restore()
    if writer is not None:
      writer.close()
    if batch_log is not None:
      batch_log.close()

  s = config.sample
  sampling = gen.SamplingConfig(steps=s.steps, gen_length=s.gen_length,
                                block_length=s.block_length, temperature=s.temperature)
  if t.objective == 'block_diffusion':
    from dllm_jax.sampling import block  # pylint: disable=g-import-not-at-top
    sampling = block.BlockSamplingConfig(
        gen_length=s.gen_length, block_length=t.block.block_size,
        steps=t.block.block_size, temperature=s.temperature)
  if end == t.steps and s.num_samples > 0:
    try:
      texts = sample_text(state.params, model_cfg, tokenizer, s.prompt, sampling,
                          sample_key, s.num_samples, chat=t.objective == 'sft')
    except ValueError as e:  # E.g. prompt + gen_length longer than the model.
      _log(f'no sample: {e}')
      texts = []
    for i, text in enumerate(texts):
      _log(f'--- sample {i} ({sampling}) ---\n{s.prompt}{text}')
  _log(f'final parameters: fingerprint {checkpoint.fingerprint(state.params)}')
  return state
