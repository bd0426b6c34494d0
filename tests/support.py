"""Public helpers shared by the test modules (fixtures wrapping them live in
conftest.py). Test modules import from here, never each other's private names."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

from launch.configs import default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A two-layer, 32-wide model on 4 x 32 tokens: trains a step in milliseconds.
SMALL_CLI = ['--config.model.d_model=32', '--config.model.n_layers=1',
             '--config.model.n_heads=2', '--config.model.d_ff=64',
             '--config.model.max_len=64', '--config.data.seq_len=32',
             '--config.train.batch_size=4', '--config.optimizer.warmup_steps=2',
             '--config.sample.gen_length=16', '--config.sample.block_length=8',
             '--config.sample.steps=4', '--config.sample.num_samples=1']


def small_config(**train):
  """The default run config shrunk to a 2-layer, 32-wide model on 4 x 32 tokens,
  6 steps; keyword arguments override `train.*` fields."""
  config = default.get_config()
  config.model.d_model, config.model.n_layers, config.model.n_heads = 32, 2, 2
  config.model.d_ff, config.model.max_len = 64, 64
  config.data.seq_len = 32
  config.train.batch_size = 4
  config.train.steps = 6
  config.train.log_every = 2
  config.train.checkpoint_every = 2
  config.optimizer.warmup_steps = 2
  config.sample.gen_length, config.sample.block_length, config.sample.steps = 16, 16, 4
  for k, v in train.items():
    config.train[k] = v
  return config


def free_port() -> int:
  """A TCP port on 127.0.0.1 that is free now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start_processes(cmd: list[str], *, count: int = 2,
                    devices: int = 4) -> list[subprocess.Popen]:
  """Starts `cmd` (in the repo root) as `count` JAX processes on loopback, each
  with `devices` CPU devices and the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES
  / JAX_PROCESS_ID that `multihost.maybe_initialize` reads (`launch.train` does);
  stdout and stderr merged, as text. Wait with `wait_processes`."""
  port = free_port()
  procs = []
  for i in range(count):
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_NUM_CPU_DEVICES': str(devices),
           'JAX_COORDINATOR_ADDRESS': f'127.0.0.1:{port}',
           'JAX_NUM_PROCESSES': str(count), 'JAX_PROCESS_ID': str(i)}
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  return procs


def wait_processes(procs: list[subprocess.Popen], timeout: float = 300) -> list[str]:
  """The outputs of `start_processes`'s processes once all have ended; any still
  running after `timeout` seconds (or on an error here) is killed."""
  try:
    return [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


def gloo_timed_out(outs: list[str]) -> bool:
  """Whether a failed multi-process run failed to connect its CPU collectives
  (Gloo) in time: on a loaded 2-core machine the processes' start-up can take
  longer than Gloo waits. Callers run such a run once more."""
  text = '\n'.join(outs)
  return bool(re.search('gloo', text, re.I) and re.search('time ?out|timed out', text, re.I))


def record_training() -> dict:
  """Patches the trainer's step, save and restore to record, in the dict it
  returns: 'losses' {step: exact loss}, 'saved' {step: fingerprint of the
  parameters saved}, 'restored' [{step, fingerprint}] (the trainer's own
  restore path), 'batches' [digest of each step's global batch, all processes'
  rows]. For worker processes (it patches modules for good)."""
  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils
  from dllm_jax.parallel import multihost
  from dllm_jax.training import checkpoint, progress, train_step as ts
  # pylint: enable=g-import-not-at-top
  out = {'losses': {}, 'saved': {}, 'restored': [], 'batches': []}
  global_batch = multihost.global_batch

  def recording_global_batch(local, sharding):
    batch = global_batch(local, sharding)
    tokens = multihost_utils.process_allgather(batch['tokens'], tiled=True)
    out['batches'].append(progress.batch_fingerprint({'tokens': tokens}))
    return batch
  make_step, save, restore = (ts.make_train_step, checkpoint.save_state,
                              checkpoint.restore_latest_good)

  def recording_step(*args, **kwargs):  # Records every step's exact loss.
    jitted = make_step(*args, **kwargs)

    class Lowered:
      def __init__(self, lowered):
        self.compiled = lowered.compile()

      def compile(self):
        def run(state, batch, key):
          state, metrics = self.compiled(state, batch, key)
          out['losses'][int(state.step)] = float(metrics['loss'])
          return state, metrics
        run.memory_analysis = self.compiled.memory_analysis
        return run
    return type('Jitted', (), {'lower': lambda self, *a: Lowered(jitted.lower(*a))})()

  def recording_save(mngr, state, *args, **kwargs):
    step = save(mngr, state, *args, **kwargs)
    out['saved'][step] = checkpoint.fingerprint(state.params)
    return step

  def recording_restore(*args, **kwargs):
    restored = restore(*args, **kwargs)
    if restored is not None:
      state, _ = restored
      out['restored'].append({'step': int(state.step),
                              'fingerprint': checkpoint.fingerprint(state.params)})
    return restored

  ts.make_train_step, checkpoint.save_state = recording_step, recording_save
  multihost.global_batch = recording_global_batch
  checkpoint.restore_latest_good = recording_restore
  return out


def launch_train(workdir, *overrides) -> subprocess.Popen:
  """`python -m launch.train` on the small CLI config, output piped as text."""
  return subprocess.Popen(
      [sys.executable, '-m', 'launch.train', f'--workdir={workdir}', *SMALL_CLI,
       *overrides], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)


def read_batch_log(workdir) -> list[str]:
  """The consumed batch of every step from WORKDIR/batches.txt; a step re-run
  after a crash counts once (its last record), as the resumed run consumed it."""
  seen = {}
  with open(os.path.join(workdir, 'batches.txt')) as f:
    for line in f:
      step, digest = line.split()
      seen[int(step)] = digest
  return [seen[s] for s in sorted(seen)]


def write_random_checkpoint(workdir, config=None, seed=0, edit=None) -> None:
  """A workdir holding random parameters of `config` (default `small_config()`)
  as a step-0 checkpoint that `restore_for_inference` reads, without training
  (a training run's compile costs tens of seconds on a loaded CPU);
  `edit(params, model_config)`, if given, changes the parameters first."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from dllm_jax import models  # pylint: disable=g-import-not-at-top
  from dllm_jax import models as model  # pylint: disable=g-import-not-at-top
  from dllm_jax.tokenizers import ByteTokenizer  # pylint: disable=g-import-not-at-top
  from dllm_jax.training import checkpoint, trainer  # pylint: disable=g-import-not-at-top
  config = config or small_config()
  tok = ByteTokenizer()
  cfg = trainer.model_config(config, tok)
  params = jax.jit(model.init_params, static_argnums=0)(cfg, jax.random.key(seed))
  if edit is not None:
    params = edit(params, cfg)
  meta = checkpoint.make_meta(0, {'config': config.to_dict(),
                                  'model_config': models.config_to_dict(cfg),
                                  'tokenizer': tok.to_dict()})
  mngr = checkpoint.make_manager(str(workdir), async_save=False)
  mngr.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                       meta=ocp.args.JsonSave(meta)))
  mngr.wait_until_finished()
  mngr.close()


def eos_prone(params, config, like: int = 173, sharpen: float = 60.0):
  """Random parameters that end answers early: the output head scaled by
  `sharpen` (confident predictions) and EOS's column 1.05 x token `like`'s, so
  EOS comes where `like` would (a token the tiny random models predict now and
  then: rows of `eos_block_workdir` end in different blocks)."""
  head = params['ff_out']['kernel'] * sharpen
  head = head.at[:, config.ids.eos].set(head[:, like] * 1.05)
  return {**params, 'ff_out': {**params['ff_out'], 'kernel': head}}


def step_rows(engine, arrivals):
  """Steps `stepper.RowBatch` rows that join at the given block boundaries:
  arrivals [(boundary, Request)] (settings of one program: they may differ in
  their floats) -> Completions."""
  from dllm_jax.serving import stepper  # pylint: disable=g-import-not-at-top
  sc = engine.resolve(arrivals[0][1].sampling)
  ids = [engine.encode(r.prompt) for _, r in arrivals]
  rows = stepper.RowBatch(engine, sc, engine.bucket(max(map(len, ids)), sc),
                          engine.batch_bucket(1))
  out, boundary = {}, 0
  while len(out) < len(arrivals):
    for k, (at, r) in enumerate(arrivals):
      if at == boundary:
        rows.fit(len(rows.live) + 1)
        rows.admit(k, ids[k], r.seed, engine.resolve(r.sampling))
    for i, tokens, finished in rows.step():
      if finished:
        out[rows.jobs[i]] = rows.completion(i, tokens, len(ids[rows.jobs[i]]))
        rows.leave(i)
    rows.fit(len(rows.live))
    boundary += 1
  return [out[k] for k in range(len(arrivals))]


def start_server(args, timeout_s=180.0, env=None):
  """Starts `python -m launch.serve` with `args` on a free port and waits for
  /health; returns (process, base URL). The caller ends the process."""
  from launch import serve_process  # pylint: disable=g-import-not-at-top
  return serve_process.start(args, timeout_s=timeout_s, env=env)



def jit_init_params(config, seed: int = 0):
  """`model.init_params(config, key(seed))` under jit: eagerly every op
  dispatches and compiles on its own (seconds per call on a loaded CPU)."""
  import jax  # pylint: disable=g-import-not-at-top
  from dllm_jax import models as model  # pylint: disable=g-import-not-at-top
  return jax.jit(model.init_params, static_argnums=0)(config, jax.random.key(seed))


def jit_forward(params, tokens, segment_ids=None, positions=None, *, config,
                kv_lengths=None):
  """`model.forward` under jit: logits [B, L, V] of tokens int [B, L] (one
  compile per shape and `config`; eagerly each op compiles on its own)."""
  import jax  # pylint: disable=g-import-not-at-top
  from dllm_jax import models as model  # pylint: disable=g-import-not-at-top
  return jax.jit(model.forward, static_argnames='config')(
      params, tokens, segment_ids, positions, config=config, kv_lengths=kv_lengths)


# XLA:CPU flags that tests/conftest.py adds to XLA_FLAGS for the session (LLVM
# -O0 without its expensive passes): compiling the tests' tiny programs takes
# about half the CPU time. Numerics move by rounding only.
FAST_COMPILE_FLAGS = ('--xla_backend_optimization_level=0',
                      '--xla_llvm_disable_expensive_passes=true')


def with_fast_compiles(env: dict[str, str]) -> dict[str, str]:
  """`env` with the FAST_COMPILE_FLAGS that XLA_FLAGS lacks appended."""
  flags = env.get('XLA_FLAGS', '').split()
  return {**env, 'XLA_FLAGS': ' '.join(
      flags + [f for f in FAST_COMPILE_FLAGS if f not in flags])}


def without_fast_compiles(env: dict[str, str]) -> dict[str, str]:
  """`env` with FAST_COMPILE_FLAGS taken out of XLA_FLAGS: for a subprocess
  whose bounds were set at XLA's default optimisation."""
  flags = [f for f in env.get('XLA_FLAGS', '').split() if f not in FAST_COMPILE_FLAGS]
  return {**env, 'XLA_FLAGS': ' '.join(flags)}


def run_worker(module: str, *args: str, timeout: float, env=None):
  """Runs `python -m module args` from the repository root and returns the
  JSON its last stdout line prints (asserting it exited 0)."""
  r = subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=timeout)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.strip().splitlines()[-1])
