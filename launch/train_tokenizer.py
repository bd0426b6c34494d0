r"""Trains a SentencePiece tokenizer (with the mask and end-of-turn tokens a
diffusion LM needs) on a local corpus: any data source the trainer reads.

  python -m launch.train_tokenizer --source=stdlib --vocab_size=1024 \
      --out=/tmp/spm/stdlib
  python -m launch.train --workdir=/tmp/dllm_sp \
      --config.data.tokenizer=sentencepiece:/tmp/spm/stdlib.model
"""


from absl import app, flags

from launch import cli

_SOURCE = flags.DEFINE_string('source', 'stdlib', 'Data source spec (see '
                              'dllm_jax/data/sources.py).')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data dir.')
_FIELD = flags.DEFINE_string('text_field', 'text', 'Text field of the records.')
_OUT = flags.DEFINE_string('out', None, 'Output prefix: writes PREFIX.model and '
                           'PREFIX.vocab.', required=True)
_VOCAB = flags.DEFINE_integer('vocab_size', 1024, 'Vocabulary size.')
_MODEL_TYPE = flags.DEFINE_enum('model_type', 'bpe', ['bpe', 'unigram'],
                                'SentencePiece model type.')
_MAX_DOCS = flags.DEFINE_integer('max_documents', 2000, 'Documents to train on.')


def main(argv):
  cli.start(argv)
  from dllm_jax.data import sources  # pylint: disable=g-import-not-at-top
  from dllm_jax.tokenizers import sp as sp_tokenizer  # pylint: disable=g-import-not-at-top
  with cli.one_line_errors():
    source = sources.open_source(_SOURCE.value, data_dir=_DATA_DIR.value)
    record_format = sources.record_format_of(_SOURCE.value)

    def texts():
      for i in range(min(len(source), _MAX_DOCS.value)):
        try:
          text = sources.decode_record(source[i], record_format).get(_FIELD.value)
        except sources.RecordError:
          continue
        if isinstance(text, str):
          yield text

    path = sp_tokenizer.train(texts(), _OUT.value, vocab_size=_VOCAB.value,
                              model_type=_MODEL_TYPE.value)
    tok = sp_tokenizer.SentencePieceTokenizer(path)
  sample = 'def f(x):\n    return x + 1\n'
  ids = tok.encode(sample)
  print(f'wrote {path}: vocab {tok.vocab_size}, mask {tok.mask_id}, bos {tok.bos_id}, '
        f'eos {tok.eos_id}, eot {tok.eot_id}, pad {tok.pad_id}')
  print(f'{len(sample.encode())} bytes -> {len(ids)} tokens on {sample!r}; round trip '
        f'{"ok" if tok.decode(ids) == sample else "FAILED"}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
