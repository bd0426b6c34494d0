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
  from dllm_jax.serving import harness  # pylint: disable=g-import-not-at-top
  lm = harness.DllmJaxLM(workdir=random_block_workdir, temperature=0.5)
  assert isinstance(lm.sampling, block.BlockSamplingConfig)
  assert lm.sampling.temperature == 0.5 and lm.opts['block_size'] == 8
