"""The trainer over the data pipeline: exact resume with and without Grain
workers, SFT by config (from a pretrained run), other tokenizers, and a
tokenizer that no longer matches the checkpoint."""

import jax
import numpy as np
import pytest

from dllm_jax.data import stdlib_corpus, synthetic_sft
from dllm_jax.tokenizers import sp as sp_tokenizer
from dllm_jax.training import checkpoint, trainer
from tests.support import read_batch_log as _batch_log, small_config


# Grain workers under the trainer: -m slow (tests/test_data.py resumes the
# pipeline with 2 workers exactly in the default run, and num_workers=0 here).
@pytest.mark.parametrize('num_workers', [0, pytest.param(2, marks=pytest.mark.slow)])
def test_resumed_run_consumes_exactly_the_uninterrupted_batches(tmp_path, num_workers):
  config = small_config(record_batches=True)
  config.data.num_workers = num_workers
  config.sample.num_samples = 0  # Batches and parameters are checked, not samples.
  full = trainer.train(config, str(tmp_path / 'full'))
  trainer.train(config, str(tmp_path / 'split'), stop_after=3)
  assert len(_batch_log(tmp_path / 'split')) == 3
  resumed = trainer.train(config, str(tmp_path / 'split'))
  assert _batch_log(tmp_path / 'split') == _batch_log(tmp_path / 'full')
  assert len(set(_batch_log(tmp_path / 'full'))) == 6  # Six different batches.
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(full.params)):
    np.testing.assert_array_equal(a, b)


def test_sft_by_config_from_a_pretrained_run(tmp_path, trained_workdir):
  pre = trained_workdir[0]  # Two pretraining steps.
  pretrained = checkpoint.restore_for_inference(pre).params
  synthetic_sft.write(str(tmp_path / 'sft'), num_train=64, num_validation=8)
  config = small_config(steps=3, objective='sft', init_from=pre, log_every=1)
  config.data.source = f'jsonl:{tmp_path}/sft/{{split}}.jsonl'
  config.data.seq_len = 48
  config.sample.num_samples = 0  # Parameters and steps are checked, not samples.
  # The first SFT update moves the pretrained parameters by about one lr.
  first = trainer.train(config, str(tmp_path / 'sft_run'), stop_after=1)
  for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(pretrained)):
    assert np.max(np.abs(np.asarray(a) - np.asarray(b))) < 3 * config.optimizer.lr
  state = trainer.train(config, str(tmp_path / 'sft_run'))
  assert int(state.step) == 3
  meta = checkpoint.read_meta(str(tmp_path / 'sft_run'))
  assert meta['config']['train']['objective'] == 'sft'


def test_sentencepiece_run_and_a_mismatched_tokenizer_on_resume(tmp_path):
  texts = [open(p).read() for p in stdlib_corpus.stdlib_files('validation')[:10]]
  path = sp_tokenizer.train(texts, str(tmp_path / 'sp' / 'a'), vocab_size=600)
  config = small_config(steps=2)
  config.data.tokenizer = f'sentencepiece:{path}'
  trainer.train(config, str(tmp_path / 'run'))
  cfg, _, tok = checkpoint.restore_for_inference(str(tmp_path / 'run'))
  assert (cfg.vocab_size, cfg.mask_id) == (640, tok.mask_id)  # 600 -> 5 x 128.
  sp_tokenizer.train(texts, str(tmp_path / 'sp' / 'a'), vocab_size=700)  # Replaced.
  config.train.steps = 4
  with pytest.raises(ValueError, match="tokenizer does not match the checkpoint's "
                     r"\(vocab_size 600 -> 700\)"):
    trainer.train(config, str(tmp_path / 'run'))
  with pytest.raises(ValueError, match='does not match the checkpoint'):
    checkpoint.restore_for_inference(str(tmp_path / 'run'))
