"""SFT of the tiny diffusion LM on chat examples (LLaDA's SFT loss).

Default data: the synthetic tasks of `python -m launch.make_sft_data
--out=/tmp/sft_data` (reverse / add / upper / sort). Start from a pretrained run
with --config.train.init_from=WORKDIR (same model shape and tokenizer).
"""

from launch.configs import default


def get_config():
  config = default.get_config()
  config.train.objective = 'sft'
  config.data.source = 'jsonl:/tmp/sft_data/{split}.jsonl'
  config.data.seq_len = 48  # Prompt + answer + EOS padding, one example per row.
  config.train.steps = 1500
  config.train.log_every = 100
  config.optimizer.warmup_steps = 50
  config.sample.prompt = 'reverse hello'
  config.sample.gen_length = 16
  config.sample.steps = 16
  config.sample.block_length = 16
  config.sample.temperature = 0.0
  config.sample.num_samples = 1
  return config
