"""`launch.sample` routes a block-diffusion checkpoint to the block sampler with
its trained block size; the full-sequence sampler refuses such a checkpoint and
the block sampler one trained without blocks, each in one line. The launcher's
own flag parsing and `main` run in this process (no interpreter start per case)."""

import pytest
from absl import flags

from launch import cli


@pytest.fixture
def sample_main():
  """Runs `launch.sample` with the given flags: (exit message or None, stdout)."""
  from launch import sample  # pylint: disable=g-import-not-at-top

  def run(capsys, *args):
    flags.FLAGS.unparse_flags()
    cli.parse_flags(['sample', *args])
    try:
      sample.main(['sample'])
      message = None
    except SystemExit as e:
      message = str(e.code)
    return message, capsys.readouterr().out

  yield run
  flags.FLAGS.unparse_flags()


def test_sample_launcher_routes_and_refuses_by_objective(
    sample_main, capsys, random_block_workdir, random_workdir):
  block_run = f'--workdir={random_block_workdir}'
  message, out = sample_main(capsys, block_run, '--prompt=ab', '--num_samples=2',
                             '--parallel=threshold', '--block_threshold_rule=dinfer',
                             '--temperature=0.7', '--block_confidence=plain',
                             '--steps=4', '--block_minimal_topk=2',
                             '--block_eos_early_stop')
  assert message is None
  assert out.count('--- sample ') == 2 and '--- sample 1 ---\nab' in out, out
  assert out.count('[forwards: ') == 2 and ' decided tokens, ' in out, out
  refusals = [
      ((block_run, '--sampler=full'), 'objective block_diffusion (block size 8); '
       'the full-sequence sampler does not apply'),
      ((f'--workdir={random_workdir}', '--sampler=block'),
       "trained with objective 'pretrain', without blocks"),
      ((block_run, '--block_length=4', '--gen_length=8'),
       'block_length=4 differs from the block size 8 the checkpoint was trained with'),
      ((block_run, '--cache=dual'), '--cache: knobs of the full-sequence sampler'),
      ((block_run, '--gen_length=8', '--block_minimal_topk=9'),
       'minimal_topk must be at most gen_length 8'),
      ((f'--workdir={random_workdir}', '--block_fuse_write'),
       '--block_fuse_write: knobs of the block sampler'),
  ]
  for args, want in refusals:
    message, _ = sample_main(capsys, *args)
    assert message is not None and message.startswith('error: ') and want in message, (
        args, message)
    assert '\n' not in message


def test_engine_serves_a_block_run_with_the_block_sampler(random_block_workdir):
  """The `Engine` of a block-diffusion run defaults to the block sampler (its
  trained block size); full-sequence settings are refused in one line (the
  server's per-request check too)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dllm_jax import SamplingConfig  # pylint: disable=g-import-not-at-top
  from dllm_jax.sampling import block  # pylint: disable=g-import-not-at-top
  from dllm_jax.serving import Engine, Request  # pylint: disable=g-import-not-at-top
  engine = Engine.from_workdir(random_block_workdir)
  sc = engine.default_sampling
  assert isinstance(sc, block.BlockSamplingConfig) and sc.block_length == 8
  want = 'the full-sequence sampler does not apply'
  full = SamplingConfig(steps=8, gen_length=8, block_length=8)
  with pytest.raises(ValueError, match=want):
    engine.generate([Request('ab', full)])
  with pytest.raises(ValueError, match=want):
    engine.check(np.array([1, 2]), engine.resolve(full), 0)
  with pytest.raises(ValueError, match='cfg_scale is not a setting of the block sampler'):
    engine.sampling_for(8, cfg_scale=1.0)


def test_lm_eval_model_loads_a_block_run(random_block_workdir):
  """The harness model of a block-diffusion run: its generations use the block
  sampler, its likelihoods the block NELBO (which has no guidance: cfg_scale
  is refused, tests/test_block_likelihood.py)."""
  from dllm_jax.sampling import block  # pylint: disable=g-import-not-at-top
  from dllm_jax.evaluation import harness  # pylint: disable=g-import-not-at-top
  lm = harness.DllmJaxLM(workdir=random_block_workdir, temperature=0.5)
  assert isinstance(lm.sampling, block.BlockSamplingConfig)
  assert lm.sampling.temperature == 0.5 and lm.opts['block_size'] == 8


@pytest.fixture(scope='module')
def next_token_workdir(tmp_path_factory):
  """Random weights of a next-token (causal) run of one layer; do not write to it."""
  from tests import support  # pylint: disable=g-import-not-at-top
  config = support.small_config(objective='next_token')
  config.model.n_layers = 1
  workdir = tmp_path_factory.mktemp('next_token_workdir')
  support.write_random_checkpoint(workdir, config)
  return str(workdir)


def test_sample_launcher_decodes_a_next_token_checkpoint_greedily(
    sample_main, capsys, next_token_workdir):
  """The diffusion samplers printed garbage for a causal model (exit 0)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dllm_jax.training import workdir as checkpoint  # pylint: disable=g-import-not-at-top
  from dllm_jax.sampling import autoregressive  # pylint: disable=g-import-not-at-top
  run = f'--workdir={next_token_workdir}'
  message, out = sample_main(capsys, run, '--prompt=ab', '--num_samples=1',
                             '--gen_length=6')
  assert message is None, message
  config, params, tok = checkpoint.restore_for_inference(next_token_workdir)
  ids = tok.encode('ab', add_bos=True)
  want = autoregressive.greedy(params, ids[None], config=config, gen_length=6)
  assert out == (f'--- sample 0 ---\nab{tok.decode(np.asarray(want)[0, len(ids):])}\n'
                 '[forwards: 6 decided tokens, 6 in all]\n')
  message, _ = sample_main(capsys, run, '--steps=4', '--temperature=0.5')
  assert message == ('error: --steps, --temperature: knobs of the diffusion '
                     'samplers; this checkpoint was trained with train.objective='
                     'next_token and is decoded greedily, one token at a time.')


def test_sample_launcher_refuses_more_steps_than_positions_to_fill(
    sample_main, capsys, random_workdir, random_block_workdir):
  """`--steps` was unbounded (10^8 ran for minutes)."""
  message, _ = sample_main(capsys, f'--workdir={random_workdir}', '--steps=16',
                           '--gen_length=8', '--block_length=8')
  assert message == ('error: steps=16 exceeds the 8 positions to fill (gen_length): '
                     'each step commits at least one.')
  message, out = sample_main(capsys, f'--workdir={random_workdir}', '--gen_length=2',
                             '--block_length=2', '--num_samples=1')
  assert message is None and out.count('--- sample ') == 1  # Its 4 steps: 2.
  message, _ = sample_main(capsys, f'--workdir={random_block_workdir}', '--steps=9')
  assert message == ('error: steps=9 exceeds the 8 positions a block has: each step '
                     'commits at least one.')
