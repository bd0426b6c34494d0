"""A training run's config as typed, self-checking sections.

The defaults below are the only ones: `launch/configs/*.py` start from the
ml_collections ConfigDict that `config_dict.py` writes out of them (and
`--config.a.b=v` flags override it); `RunConfig.of(config)` turns it into frozen dataclasses,
one per section (model, data, train, optimizer, mesh, sample) plus the seed.
Every numeric or choice field declares what it allows in its `knob(...)`
below, the one place those rules live; building a section checks them and a bad
value is a one-line ValueError naming `section.field`, the value and what is
allowed. `python -m dllm_jax.training.sections` prints them as a table.

A field declared `fixed=True` is one a resumed run may not change (the
parameters or the data order would mean something else); provenance.py reads
them through `RunConfig.fixed_keys()`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Callable, ClassVar, Mapping


from dllm_jax import models, objectives
from dllm_jax import tokenizers as tokenizer_lib
from dllm_jax.data import pipeline, sources
from dllm_jax.models.attention import IMPLEMENTATIONS
from dllm_jax.models.llada import DTYPES, EMBED_GRADS, REMAT_POLICIES
from dllm_jax.objectives import block as block_diffusion
from dllm_jax.training.train_step import NONFINITE_POLICIES


@dataclasses.dataclass(frozen=True)
class Range:
  """Numbers from `lo` to `hi` (None: unbounded; `*_open`: bound excluded), or
  one of `also` (e.g. -1 for "the rest")."""

  lo: float | None = None
  hi: float | None = None
  lo_open: bool = False
  hi_open: bool = False
  also: tuple = ()

  def __contains__(self, v) -> bool:
    if v in self.also:
      return True
    lo_ok = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
    hi_ok = self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)
    return lo_ok and hi_ok

  def __str__(self) -> str:
    if self.lo is not None and self.hi is not None:
      text = (f'in {"(" if self.lo_open else "["}{self.lo}, {self.hi}'
              f'{")" if self.hi_open else "]"}')
    elif self.lo is not None:
      text = f'{">" if self.lo_open else ">="} {self.lo}'
    else:
      text = f'{"<" if self.hi_open else "<="} {self.hi}'
    return text + ''.join(f' or {a}' for a in self.also)


def knob(default: Any, *, range: Range | None = None,  # pylint: disable=redefined-builtin
         choices: tuple | Callable[[], tuple] | None = None,
         check: Callable[[Any], Any] | None = None, fixed: bool = False):
  """A section field: its default, what it allows (`range` for numbers,
  `choices` (or a function returning them, for registries), `check` raising
  ValueError for structured strings) and whether a resume may change it
  (`fixed`: no)."""
  return dataclasses.field(default=default, metadata=dict(
      range=range, choices=choices, check=check, fixed=fixed))


def _choices(meta) -> tuple | None:
  c = meta['choices']
  return tuple(c()) if callable(c) else c


def _type_ok(value, hint) -> bool:
  """Whether `value` fits the field's annotation (int, float, bool, str, optional)."""
  args = typing.get_args(hint)
  if value is None:
    return type(None) in args
  kinds = tuple(a for a in args if a is not type(None)) or (hint,)
  if isinstance(value, bool):
    return bool in kinds
  if float in kinds and isinstance(value, int):
    return True
  return isinstance(value, kinds)


def _type_name(hint) -> str:
  args = [a for a in typing.get_args(hint) or (hint,) if a is not type(None)]
  name = ' | '.join(a.__name__ for a in args)
  return name + (' or None' if type(None) in typing.get_args(hint) else '')


class Section:
  """Base of the sections: checks every field on construction."""

  NAME: ClassVar[str] = ''

  def __post_init__(self):
    hints = typing.get_type_hints(type(self))
    for f in dataclasses.fields(self):
      self._check_field(f, getattr(self, f.name), hints[f.name])

  def _check_field(self, f: dataclasses.Field, value, hint) -> None:
    key = f'{self.NAME}.{f.name}' if self.NAME else f.name
    if isinstance(hint, type) and issubclass(hint, Section):
      if not isinstance(value, hint):  # An instance checked itself.
        raise ValueError(f'{key} must be a {hint.__name__}, got {type(value).__name__}.')
      return
    if not _type_ok(value, hint):
      raise ValueError(f'{key}={value!r} has the wrong type; allowed: '
                       f'{_type_name(hint)}.')
    if isinstance(value, float) and not math.isfinite(value):
      raise ValueError(f'{key}={value!r} is not a finite number; allowed: '
                       f'{f.metadata.get("range") or "finite numbers"}.')
    meta = f.metadata
    if value is None or not meta:
      return
    choices = _choices(meta)
    if choices is not None and value not in choices:
      raise ValueError(f'unknown {key} {value!r}; allowed: '
                       f'{", ".join(repr(c) for c in choices)}.')
    if meta['range'] is not None and value not in meta['range']:
      raise ValueError(f'{key}={value!r} is out of range; allowed: {meta["range"]}.')
    if meta['check'] is not None:
      try:
        meta['check'](value)
      except ValueError as e:
        raise ValueError(f'{key}={value!r}: {e}') from None

  @classmethod
  def of(cls, values: Mapping[str, Any]):
    """The section of a ConfigDict section or dict; absent keys keep defaults
    (older checkpoints' configs), unknown keys are errors."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      where = f'{cls.NAME}.' if cls.NAME else ''
      raise ValueError(f"unknown config key '{where}{unknown[0]}'; known: "
                       f'{sorted(known)}.')
    hints = typing.get_type_hints(cls)
    nested = lambda k, v: (hints[k].of(v) if isinstance(hints[k], type) and
                           issubclass(hints[k], Section) and
                           not isinstance(v, Section) else v)
    return cls(**{k: nested(k, values[k]) for k in values})

  @classmethod
  def fixed_fields(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get('fixed'))


def _check_tokenizer(spec: str) -> None:
  tokenizer_lib.check_spec(spec)


@dataclasses.dataclass(frozen=True)
class ModelSection(Section):
  """The model: a family's preset, its compute settings and shape overrides
  (None keeps the preset's value)."""

  NAME: ClassVar[str] = 'model'
  family: str = knob('llada', choices=models.names, fixed=True)  # dllm_jax/models/.
  preset: str = knob('tiny', choices=models.preset_names, fixed=True)
  dtype: str = knob('float32', choices=DTYPES)  # Compute dtype.
  param_dtype: str = knob('float32', choices=DTYPES, fixed=True)
  attention_impl: str | None = knob(None, choices=IMPLEMENTATIONS)
  d_model: int | None = knob(None, range=Range(1), fixed=True)
  n_layers: int | None = knob(None, range=Range(1), fixed=True)
  n_heads: int | None = knob(None, range=Range(1), fixed=True)
  d_ff: int | None = knob(None, range=Range(1), fixed=True)
  max_len: int | None = knob(None, range=Range(1), fixed=True)
  remat: str = knob('none', choices=REMAT_POLICIES)  # dots: keep matmul outputs.
  scan_layers: bool = knob(False)  # lax.scan over layers: compile time flat in depth.
  # Input-embedding gradient: scatter (scatter-add) | onehot (a matmul, no scatter).
  embed_grad: str = knob('scatter', choices=EMBED_GRADS)

  def __post_init__(self):
    super().__post_init__()
    family = models.preset_family(self.preset)
    if family.name != self.family:
      raise ValueError(f'model.preset={self.preset!r} is a preset of the '
                       f'{family.name!r} family, not of model.family={self.family!r}; '
                       f'set --config.model.family={family.name}.')

  def model_config(self, causal: bool = False, tokenizer=None):
    """The family's config this section asks for (`causal`: the objective's).

    The config's shape and compute keys override the preset's fields where the
    family has them (a key the family does not have must stay unset). A
    byte-vocabulary preset (tiny, small) used with another tokenizer takes that
    tokenizer's special ids and its vocabulary size rounded up to a multiple of
    128.
    """
    family = models.get(self.family)
    fields = {f.name for f in dataclasses.fields(family.config_cls)}
    overrides = {k: getattr(self, k) for k in _SHAPE_KEYS + _COMPUTE_KEYS
                 if getattr(self, k) is not None}
    overrides.update(dtype=self.dtype, param_dtype=self.param_dtype, causal=causal)
    defaults = {f.name: f.default for f in dataclasses.fields(self)}
    defaults.update(causal=False)
    bad = sorted(k for k in overrides if k not in fields and
                 overrides[k] != defaults.get(k))
    if bad:
      raise ValueError(f'model.{bad[0]} is not a field of the {family.name!r} family '
                       f'(preset {self.preset!r}).')
    overrides = {k: v for k, v in overrides.items() if k in fields}
    overrides.update(models.tokenizer_overrides(self.preset, tokenizer))
    return models.get_preset(self.preset, **overrides)


_SHAPE_KEYS = ('d_model', 'n_layers', 'n_heads', 'd_ff', 'max_len')
_COMPUTE_KEYS = ('attention_impl', 'remat', 'scan_layers', 'embed_grad')


@dataclasses.dataclass(frozen=True)
class DataSection(Section):
  NAME: ClassVar[str] = 'data'
  # stdlib (the built-in corpus, via TFDS) | tfds:NAME | array_record:GLOB |
  # text:GLOB | jsonl:GLOB; '{split}' in a glob becomes train / validation.
  source: str = knob('stdlib', check=sources.parse_spec, fixed=True)
  # TFDS data dir (the built-in corpus is prepared here on first use);
  # None: $TFDS_DATA_DIR or ~/tensorflow_datasets.
  data_dir: str | None = knob(None)
  tokenizer: str = knob('byte', check=_check_tokenizer, fixed=True)
  # concat: documents span rows; first_fit: whole documents per row (padded),
  # longer ones split (both: no attention across documents); stream: rows as
  # concat, no document boundaries (attention crosses them, with no mask: the
  # fastest attention, e.g. 51.6% vs 45.0% MFU for llada_1b on an H100).
  packing: str = knob('concat', choices=pipeline.PACKINGS, fixed=True)
  record_format: str = knob('json', choices=sources.RECORD_FORMATS, fixed=True)  # Byte records.
  text_field: str = knob('text', fixed=True)  # Pretraining records.
  prompt_field: str = knob('prompt', fixed=True)  # SFT records (or a 'messages' list).
  response_field: str = knob('response', fixed=True)
  seq_len: int = knob(64, range=Range(1), fixed=True)
  num_workers: int = knob(0, range=Range(0), fixed=True)  # Grain workers (0: in the trainer).
  # Bad records skipped in a row before the run stops (0: no limit).
  skip_budget: int = knob(1000, range=Range(0))


@dataclasses.dataclass(frozen=True)
class BlockSection(Section):
  """`train.block`: objective block_diffusion's knobs (dllm_jax/objectives/block.py).

  Noise 'row' is one t per row in [t_min, t_max] (LLaDA2), 'block' one t per
  block in [eps, 1] (BD3-LM); grow_every > 0 grows the block size from
  grow_from, doubling every so many steps; skip_tiles: attention computes only
  the (query, key) tiles the mask allows (dllm_jax/kernels/block_sparse.py; the
  same loss and gradients as the dense mask).
  """

  NAME: ClassVar[str] = 'train.block'
  block_size: int = knob(32, range=Range(1))  # Must divide data.seq_len.
  noise: str = knob('row', choices=block_diffusion.NOISES)  # row: LLaDA2, block: BD3-LM.
  t_min: float = knob(0.3, range=Range(0, 1))
  t_max: float = knob(0.8, range=Range(0, 1))
  eps: float = knob(1e-3, range=Range(0, 1))
  weight: str = knob('none', choices=block_diffusion.WEIGHTS)
  grow_every: int = knob(0, range=Range(0))  # > 0: grow the block size.
  grow_from: int = knob(1, range=Range(1))
  skip_tiles: bool = knob(True)  # Attention skips the tiles the mask rules out.

  def options(self) -> block_diffusion.BlockDiffusionOptions:
    return block_diffusion.BlockDiffusionOptions(**dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True)
class TrainSection(Section):
  NAME: ClassVar[str] = 'train'
  objective: str = knob('pretrain', choices=objectives.names, fixed=True)
  steps: int = knob(2500, range=Range(1))
  batch_size: int = knob(64, range=Range(1), fixed=True)
  grad_accum_steps: int = knob(1, range=Range(1))
  # Start from the parameters of another run's latest checkpoint (its workdir),
  # with a fresh optimizer: e.g. SFT of a pretrained model.
  init_from: str | None = knob(None)
  random_length_prob: float = knob(0.01, range=Range(0, 1))
  stratified_t: bool = knob(True)  # Stratified mask ratios (lower variance).
  log_every: int = knob(250, range=Range(1))
  checkpoint_every: int = knob(500, range=Range(1))
  # Checkpoint retention: the max_to_keep newest steps, plus every step
  # divisible by keep_every (None: none), which are never deleted.
  max_to_keep: int = knob(3, range=Range(1))
  keep_every: int | None = knob(None, range=Range(1))
  # No checkpoint restorable (all corrupt): start from scratch instead of refusing.
  fresh_start: bool = knob(False)
  # A non-finite loss or gradient norm: 'stop' (the last good checkpoint stays)
  # or 'skip' (drop that update, count it).
  nonfinite: str = knob('stop', choices=NONFINITE_POLICIES)
  # Testing aids: append 'step batch-hash' lines to WORKDIR/batches.txt; make the
  # loss NaN at one step (-1: never).
  record_batches: bool = knob(False)
  debug_nan_step: int = knob(-1, range=Range(-1))
  block: BlockSection = dataclasses.field(default_factory=BlockSection)


@dataclasses.dataclass(frozen=True)
class OptimizerSection(Section):
  """AdamW with the warmup-stable-decay schedule (training/optimizer.py)."""

  NAME: ClassVar[str] = 'optimizer'
  lr: float = knob(2e-3, range=Range(0, lo_open=True))
  warmup_steps: int = knob(100, range=Range(0))
  decay_fraction: float = knob(0.3, range=Range(0, 1))
  final_lr_ratio: float = knob(0.1, range=Range(0, 1))
  b1: float = knob(0.9, range=Range(0, 1, hi_open=True))
  b2: float = knob(0.95, range=Range(0, 1, hi_open=True))
  weight_decay: float = knob(0.1, range=Range(0))
  clip_norm: float = knob(1.0, range=Range(0))  # 0: no clipping.


@dataclasses.dataclass(frozen=True)
class MeshSection(Section):
  """Axis sizes (-1: the devices left); parallel/mesh.py."""

  NAME: ClassVar[str] = 'mesh'
  data: int = knob(-1, range=Range(1, also=(-1,)))
  fsdp: int = knob(1, range=Range(1, also=(-1,)))
  tensor: int = knob(1, range=Range(1, also=(-1,)))
  dcn_data: int = knob(1, range=Range(1))  # > 1: data split over slices / nodes.
  expert: int = knob(1, range=Range(1))  # Expert parallelism (mixtures of experts).


@dataclasses.dataclass(frozen=True)
class SampleSection(Section):
  """The sample printed after training (and launch.sample's defaults)."""

  NAME: ClassVar[str] = 'sample'
  prompt: str = knob('def ')
  steps: int = knob(64, range=Range(1))
  gen_length: int = knob(64, range=Range(1))
  block_length: int = knob(8, range=Range(1))
  temperature: float = knob(1.0, range=Range(0))  # Greedy collapses a tiny model.
  num_samples: int = knob(3, range=Range(0))


SECTIONS = (ModelSection, DataSection, TrainSection, OptimizerSection, MeshSection,
            SampleSection)
# Every section, nested ones (train.block) included.
ALL_SECTIONS = SECTIONS + (BlockSection,)


@dataclasses.dataclass(frozen=True)
class RunConfig(Section):
  """The whole run: the seed and one instance of every section."""

  seed: int = knob(0, range=Range(0), fixed=True)
  model: ModelSection = dataclasses.field(default_factory=ModelSection)
  data: DataSection = dataclasses.field(default_factory=DataSection)
  train: TrainSection = dataclasses.field(default_factory=TrainSection)
  optimizer: OptimizerSection = dataclasses.field(default_factory=OptimizerSection)
  mesh: MeshSection = dataclasses.field(default_factory=MeshSection)
  sample: SampleSection = dataclasses.field(default_factory=SampleSection)

  @classmethod
  def of(cls, config) -> 'RunConfig':
    """From a ConfigDict (or its `to_dict()`); a RunConfig is returned as is."""
    if isinstance(config, RunConfig):
      return config
    d = config.to_dict() if hasattr(config, 'to_dict') else dict(config)
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f'unknown config key {unknown[0]!r}; known: seed and the '
                       f'sections {[s.NAME for s in SECTIONS]}.')
    by_name = {s.NAME: s for s in SECTIONS}
    return cls(**{k: by_name[k].of(v) if k in by_name else v for k, v in d.items()})

  def to_dict(self) -> dict[str, Any]:
    """The JSON form stored in checkpoints (as ConfigDict.to_dict() gives)."""
    return dataclasses.asdict(self)

  @property
  def objective(self) -> objectives.Objective:
    return objectives.get(self.train.objective)

  @classmethod
  def fixed_keys(cls) -> frozenset[str]:
    """Flattened keys ('train.batch_size', 'seed') a resume may not change."""
    keys = {name for name in cls.fixed_fields()}
    keys.update(f'{s.NAME}.{name}' for s in SECTIONS for name in s.fixed_fields())
    return frozenset(keys)

  @classmethod
  def default_of(cls, key: str) -> Any:
    """The default of a flattened key ('model.family')."""
    section, _, name = key.rpartition('.')
    owner = next((s for s in SECTIONS if s.NAME == section), cls) if section else cls
    field = {f.name: f for f in dataclasses.fields(owner)}[name]
    return field.default


def field_table() -> list[tuple[str, str, str, bool]]:
  """(key, default, allowed, fixed on resume) for every field of every section."""
  rows = []
  for owner in (RunConfig,) + ALL_SECTIONS:
    hints = typing.get_type_hints(owner)
    for f in dataclasses.fields(owner):
      if not f.metadata:
        continue
      key = f'{owner.NAME}.{f.name}' if owner.NAME else f.name
      meta = f.metadata
      allowed = (', '.join(repr(c) for c in _choices(meta)) if meta['choices'] else
                 str(meta['range']) if meta['range'] else
                 f'{meta["check"].__name__.strip("_")}' if meta['check'] else
                 _type_name(hints[f.name]))
      rows.append((key, repr(f.default), allowed, bool(meta['fixed'])))
  return rows


if __name__ == '__main__':
  print('| key | default | allowed | fixed on resume |\n|---|---|---|---|')
  for row in field_table():
    print(f'| `{row[0]}` | `{row[1]}` | {row[2]} | {"yes" if row[3] else ""} |')
