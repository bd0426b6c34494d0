"""The training loop: config -> model, data, optimizer -> steps -> checkpoints.

Run it again with the same workdir and it resumes from the latest checkpoint,
with the data iterator where it stopped and the same masking noise per step.
Who does what: `sections.py` reads and checks the config, `objectives/` turns
data batches into losses, `train_step.py` is the jitted step, `checkpoint.py`
saves and restores the whole train state, `progress.py` prints and logs, and
`inputs.py` builds the dataset.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import ml_collections
import numpy as np

from dllm_jax import models
from dllm_jax import tokenizers as tokenizer_lib
from dllm_jax.errors import NonFiniteError
from dllm_jax.models import abstract_params
from dllm_jax.parallel import mesh as mesh_lib, multihost, sharding
from dllm_jax.sampling.text import sample_text
from dllm_jax.training import checkpoint, optimizer as optimizer_lib, preemption
from dllm_jax.training import elastic, workdir_lock
from dllm_jax.training import inputs
from dllm_jax.training import progress, provenance, run_checks
from dllm_jax.training import train_step as ts
from dllm_jax.training.progress import log
from dllm_jax.training.sections import RunConfig

Config = ml_collections.ConfigDict | RunConfig


def model_config(config: Config, tokenizer: tokenizer_lib.Tokenizer | None = None):
  """The model config a run asks for (`causal` follows the objective)."""
  run = RunConfig.of(config)
  return run.model.model_config(run.objective.causal_model, tokenizer)


def check_parallel(config: Config, model_cfg, mesh: jax.sharding.Mesh) -> None:
  """One-line ValueErrors for a batch or model that does not fit the mesh."""
  run_checks.check_mesh(RunConfig.of(config), model_cfg, dict(mesh.shape))


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


def _init_params_from(init_from: str, model_cfg, tokenizer, params_shardings):
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


def train(config: Config, workdir: str, *,
          stop_after: int | None = None) -> ts.TrainState:
  """Trains (or resumes) and returns the final state.

  Every config value is checked first (`sections.RunConfig`), then the
  settings against each other, the tokenizer and the mesh, before any data,
  parameters or checkpoints are touched. The state lives on the mesh of
  `config.mesh` (sharded by the logical-axis rules of `parallel/sharding.py`,
  initialised in place); each process feeds its shard of the data into the
  global batch. `stop_after`: end (with a checkpoint) once this step is done, as
  if the job were interrupted there; the schedule still spans `train.steps`. On
  SIGTERM (JAX's preemption sync point on several hosts) the current step
  finishes, a checkpoint is written and waited for, and the function returns;
  SIGINT (Ctrl-C) is treated the same (a second one interrupts at once). A
  signal during start-up (restore, compile) ends the run before its first step.
  A run whose workdir lock another run took over stops before its next step or
  save with WorkdirLockedError.
  """
  run = RunConfig.of(config)
  tokenizer = tokenizer_lib.make_tokenizer(run.data.tokenizer)
  model_cfg = run.model.model_config(run.objective.causal_model, tokenizer)
  run_checks.check_run(run, model_cfg, tokenizer)
  mesh = mesh_lib.from_config(run.mesh)
  run_checks.check_mesh(run, model_cfg, dict(mesh.shape))
  # The signal handlers first: a SIGTERM while the lock is held must release it.
  watcher = preemption.PreemptionWatcher(catch_interrupt=True)
  try:
    # One writer per workdir.
    with workdir_lock.hold(workdir) as lock, jax.set_mesh(mesh):
      return _train(run, workdir, stop_after, tokenizer, model_cfg, mesh, watcher,
                    lock)
  finally:
    watcher.restore()


def _start(run: RunConfig, workdir: str, model_cfg, tokenizer, optimizer, mesh,
           data_iter, record: dict, init_key: jax.Array):
  """(state, its abstract twin with shardings, checkpoint manager, last saved
  step or None): resumed from the workdir's newest good checkpoint, or fresh
  (from `train.init_from`'s parameters when set)."""
  init_fn = lambda k: ts.init_train_state(model_cfg, optimizer, k)
  state_abstract = jax.eval_shape(init_fn, init_key)
  state_sh = sharding.state_shardings(state_abstract, mesh,
                                      models.of(model_cfg).param_axes)
  abstract = sharding.with_shardings(state_abstract, state_sh)
  mngr = checkpoint.make_manager(workdir, max_to_keep=run.train.max_to_keep,
                                 keep_every=run.train.keep_every)
  restored = checkpoint.restore_latest_good(
      mngr, workdir, abstract, data_iter,
      check_meta=lambda meta: (elastic.check_resume(meta, run.train.batch_size),
                               provenance.check_resume(meta, record)),
      fresh_start=run.train.fresh_start)
  if restored is not None:
    state, saved = restored
    for change in provenance.check_resume(saved, record):
      log(f'config change since the checkpoint (allowed): {change}')
    log(f'resumed from step {saved["step"]} of {checkpoint.checkpoint_dir(workdir)}')
    return state, abstract, mngr, int(saved['step'])
  # Each shard made in place.
  state = jax.jit(init_fn, out_shardings=state_sh)(init_key)
  init_from = run.train.init_from
  if init_from:
    state = state.replace(params=_init_params_from(init_from, model_cfg, tokenizer,
                                                   state_sh.params))
    log(f'starting in {workdir} from the parameters of {init_from}')
  else:
    log(f'starting from scratch in {workdir}')
  return state, abstract, mngr, None


def _compile_step(run: RunConfig, model_cfg, optimizer, schedule, abstract, mesh,
                  step_key: jax.Array):
  """The train step, compiled ahead for the objective's batch schema."""
  t = run.train
  batch_sh = sharding.batch_sharding(mesh)
  t0 = time.time()
  state_sh = jax.tree.map(lambda x: x.sharding, abstract)
  compiled = ts.make_train_step(
      model_cfg, optimizer, schedule, objective=t.objective,
      grad_accum_steps=t.grad_accum_steps, random_length_prob=t.random_length_prob,
      stratified_t=t.stratified_t, nonfinite=t.nonfinite,
      debug_nan_step=t.debug_nan_step, state_shardings=state_sh,
      batch_sharding=batch_sh, block_options=t.block.options()).lower(
          abstract,
          run.objective.abstract_batch(t.batch_size, run.data.seq_len,
                                       run.data.packing, batch_sh),
          step_key).compile()
  progress.log_compiled(compiled, time.time() - t0)
  return compiled, batch_sh


class _Saver:
  """Saves the train state: never into a workdir another run took over, never a
  state past a bad step. `last` is the step last saved (None: none yet)."""

  def __init__(self, mngr, data_iter, record, lock, last: int | None):
    self.mngr, self.data_iter, self.record, self.lock = mngr, data_iter, record, lock
    self.last = last

  def __call__(self, state: ts.TrainState) -> None:
    workdir_lock.check_held(self.lock)
    _check_finite(state, self.last)
    self.last = checkpoint.save_state(self.mngr, state, self.data_iter, self.record)


def _steps(state: ts.TrainState, steps: range, run: RunConfig, train_step, data_iter,
           batch_sh, step_key, prog, saver: _Saver,
           watcher: preemption.PreemptionWatcher,
           workdir: str) -> tuple[ts.TrainState, bool]:
  """Runs `steps`, logging and saving on schedule: (state, stopped by a signal)."""
  t, end = run.train, steps.stop
  for step in steps:
    if saver.lock is not None and saver.lock.lost and jax.process_count() == 1:
      saver.lock.check()  # Its heartbeat saw another run take the workdir over.
    batch = next(data_iter)
    state, metrics = train_step(state, multihost.global_batch(batch, batch_sh),
                                step_key)
    done = step + 1
    prog.batch(done, batch)
    if done % t.log_every == 0 or done == end:
      _check_finite(state, saver.last)
      prog.report(done, jax.device_get(metrics))  # Host syncs: here, saves.
    if done % t.checkpoint_every == 0 or done == end:
      saver(state)
    if watcher.should_stop(done):
      if saver.last != done:
        saver(state)
      saver.mngr.wait_until_finished()  # Before the message: the save is complete.
      log(f'stopped by {watcher.signal_name} after step {done}: checkpoint '
          f'saved in {checkpoint.checkpoint_dir(workdir)}; rerun the same '
          'command to resume.')
      return state, True
  return state, False


def _train(run: RunConfig, workdir: str, stop_after: int | None, tokenizer,
           model_cfg, mesh, watcher: preemption.PreemptionWatcher,
           lock: workdir_lock.WorkdirLock | None) -> ts.TrainState:
  t = run.train
  os.makedirs(workdir, exist_ok=True)
  progress.log_start(run.to_dict(), model_cfg, mesh)
  record = provenance.run_record(run.to_dict(), model_cfg, tokenizer)
  optimizer, schedule = optimizer_lib.make_optimizer(
      total_steps=t.steps, **dataclasses.asdict(run.optimizer))
  note = optimizer_lib.warmup_note(t.steps, run.optimizer.warmup_steps,
                                   run.optimizer.decay_fraction)
  if note:
    log(note)
  data_iter = inputs.make_train_iterator(run, tokenizer)
  init_key, step_key, sample_key = jax.random.split(jax.random.key(run.seed), 3)
  state, abstract, mngr, last_saved = _start(run, workdir, model_cfg, tokenizer,
                                             optimizer, mesh, data_iter, record,
                                             init_key)
  step_key = jax.device_put(step_key, sharding.replicated(mesh))
  train_step, batch_sh = _compile_step(run, model_cfg, optimizer, schedule,
                                       abstract, mesh, step_key)
  start = int(state.step)
  end = t.steps if stop_after is None else min(stop_after, t.steps)
  saver = _Saver(mngr, data_iter, record, lock, last_saved)
  with progress.Progress(workdir, model_cfg=model_cfg, seq_len=run.data.seq_len,
                         batch_size=t.batch_size, total_steps=t.steps,
                         start_step=start, record_batches=t.record_batches) as prog:
    try:
      if jax.process_count() == 1 and watcher.signal_name is not None:
        log(f'stopped by {watcher.signal_name} during start-up, before step '
            f'{start + 1}: nothing new to save; rerun the same command to resume.')
        return state
      state, stopped = _steps(state, range(start, end), run, train_step, data_iter,
                              batch_sh, step_key, prog, saver, watcher, workdir)
      if stopped:
        return state
    finally:
      # On every exit, errors included: finish saves (last: a failed save raises
      # CheckpointSaveError here).
      mngr.wait_until_finished()

  if end == t.steps and run.sample.num_samples > 0:
    _print_samples(run, state.params, model_cfg, tokenizer, sample_key)
  log(f'final parameters: fingerprint {checkpoint.fingerprint(state.params)}')
  return state


def _print_samples(run: RunConfig, params, model_cfg, tokenizer, key) -> None:
  s = run.sample
  sampling = run_checks.sample_config(run)
  try:
    if sampling is None:  # A next-token run: greedy decoding.
      from dllm_jax.sampling import autoregressive  # pylint: disable=g-import-not-at-top
      ids = run_checks.sample_prompt_ids(run, tokenizer)
      out = autoregressive.greedy(params, np.tile(ids, (s.num_samples, 1)),
                                  config=model_cfg, gen_length=s.gen_length)
      texts = [tokenizer.decode(row[len(ids):]) for row in np.asarray(out)]
      sampling = 'greedy'
    else:
      texts = sample_text(params, model_cfg, tokenizer, s.prompt, sampling, key,
                          s.num_samples, chat=run.objective.data == 'chat')
  except ValueError as e:  # Checked before training (run_checks.check_sample).
    log(f'no sample: {e}')
    texts = []
  for i, text in enumerate(texts):
    log(f'--- sample {i} ({sampling}) ---\n{s.prompt}{text}')
