"""Default run: the tiny diffusion LM on the built-in corpus (stdlib sources).

On a 2-core CPU it trains in about 8.5 minutes (2,500 steps of 64 x 64 tokens,
~10M tokens) and its samples show Python's shape (indentation, keywords).
Override any key: --config.train.steps=200 --config.model.preset=small
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.model = ml_collections.ConfigDict()
  config.model.family = 'llada'  # The preset's family (dllm_jax/models/).
  config.model.preset = 'tiny'  # tiny | small | llada_1b | llada_8b
  config.model.dtype = 'float32'  # Compute dtype: float32 | bfloat16.
  config.model.param_dtype = 'float32'
  config.model.attention_impl = config_dict.placeholder(str)  # xla | cudnn | None
  # Optional shape overrides of the preset (None keeps the preset's value).
  config.model.d_model = config_dict.placeholder(int)
  config.model.n_layers = config_dict.placeholder(int)
  config.model.n_heads = config_dict.placeholder(int)
  config.model.d_ff = config_dict.placeholder(int)
  config.model.max_len = config_dict.placeholder(int)
  config.model.remat = 'none'  # none | full | dots (keep matmul outputs).
  config.model.scan_layers = False  # lax.scan over layers: compile time flat in depth.
  # Input-embedding gradient: scatter (scatter-add) | onehot (a matmul, no scatter).
  config.model.embed_grad = 'scatter'

  # Device mesh (dllm_jax/parallel/mesh.py): sizes of the data, fsdp and tensor
  # axes, -1 takes the remaining devices; dcn_data > 1 splits the data axis
  # across that many slices / nodes (a hybrid mesh).
  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1
  config.mesh.fsdp = 1
  config.mesh.tensor = 1
  config.mesh.dcn_data = 1
  config.mesh.expert = 1  # Expert parallelism (mixture-of-experts presets).

  config.data = ml_collections.ConfigDict()
  # stdlib (the built-in corpus, via TFDS) | tfds:NAME | array_record:GLOB |
  # text:GLOB | jsonl:GLOB; '{split}' in a glob becomes train / validation.
  config.data.source = 'stdlib'
  # TFDS data dir (the built-in corpus is prepared here on first use);
  # None: $TFDS_DATA_DIR or ~/tensorflow_datasets.
  config.data.data_dir = config_dict.placeholder(str)
  config.data.tokenizer = 'byte'  # byte | sentencepiece:MODEL_FILE | hf:DIR
  # concat: documents span rows; first_fit: whole documents per row (padded),
  # longer ones split (both: no attention across documents); stream: rows as
  # concat, no document boundaries (attention crosses them, with no mask: the
  # fastest attention, e.g. 51.6% vs 45.0% MFU for llada_1b on an H100).
  config.data.packing = 'concat'
  config.data.record_format = 'json'  # Byte records: json objects | text.
  config.data.text_field = 'text'  # Pretraining records.
  config.data.prompt_field = 'prompt'  # SFT records (or a 'messages' list).
  config.data.response_field = 'response'
  config.data.seq_len = 64
  config.data.num_workers = 0  # Grain worker processes (0: read in the trainer).
  # Bad records (undecodable, a missing field, too long) are skipped and counted;
  # this many in a row stop the run with one line naming the first (0: no limit).
  config.data.skip_budget = 1000

  config.train = ml_collections.ConfigDict()
  config.train.objective = 'pretrain'  # pretrain | sft | next_token (AR twin)
  config.train.steps = 2500
  config.train.batch_size = 64
  config.train.grad_accum_steps = 1
  # Start from the parameters of another run's latest checkpoint (its workdir),
  # with a fresh optimizer: e.g. SFT of a pretrained model.
  config.train.init_from = config_dict.placeholder(str)
  config.train.random_length_prob = 0.01
  # Stratified mask ratios across the batch (same expected loss, lower variance).
  config.train.stratified_t = True
  config.train.log_every = 250
  config.train.checkpoint_every = 500
  # Checkpoint retention: the max_to_keep newest steps, plus every step
  # divisible by keep_every (None: none), which are never deleted. E.g.
  # max_to_keep=3, keep_every=1000 with checkpoint_every=250 keeps 1000, 2000,
  # ... and the 3 newest. A save that fails (full disk, no permission) stops the
  # run with one line; the steps already written stay restorable.
  config.train.max_to_keep = 3
  config.train.keep_every = config_dict.placeholder(int)
  # Every checkpoint found corrupt (a checksum mismatch, missing files; each is
  # moved to WORKDIR/corrupt_checkpoints/): a run refuses to start unless this
  # is True, which starts from scratch.
  config.train.fresh_start = False
  # A non-finite loss or gradient norm: 'stop' (the last good checkpoint stays)
  # or 'skip' (drop that update, count it).
  config.train.nonfinite = 'stop'
  # Testing aids: append 'step batch-hash' lines to WORKDIR/batches.txt; make the
  # loss NaN at one step (-1: never).
  config.train.record_batches = False
  config.train.debug_nan_step = -1
  # objective=block_diffusion (dllm_jax/block_diffusion.py): block size (must
  # divide data.seq_len); noise 'row' (one t per row in [t_min, t_max], LLaDA2)
  # or 'block' (one t per block in [eps, 1], BD3-LM); loss weight none | inv_t;
  # grow_every > 0 grows the block size from grow_from, doubling every so many steps;
  # skip_tiles: attention computes only the (query, key) tiles the mask allows
  # (dllm_jax/block_sparse.py; same loss and gradients as the dense mask).
  config.train.block = ml_collections.ConfigDict(dict(
      block_size=32, noise='row', t_min=0.3, t_max=0.8, eps=1e-3, weight='none',
      grow_every=0, grow_from=1, skip_tiles=True))

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.lr = 2e-3
  config.optimizer.warmup_steps = 100
  config.optimizer.decay_fraction = 0.3
  config.optimizer.final_lr_ratio = 0.1
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.95
  config.optimizer.weight_decay = 0.1
  config.optimizer.clip_norm = 1.0

  # A sample printed at the end of training (and the defaults of launch.sample).
  config.sample = ml_collections.ConfigDict()
  config.sample.prompt = 'def '
  config.sample.steps = 64
  config.sample.gen_length = 64
  config.sample.block_length = 8
  # Greedy decoding of a model this small collapses into whitespace.
  config.sample.temperature = 1.0
  config.sample.num_samples = 3
  return config
