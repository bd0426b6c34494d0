"""Tokenizers behind one interface; the byte-level one is the default.

  tok = tokenizers.make_tokenizer('byte')        # or sentencepiece:MODEL, hf:DIR
  tok = tokenizers.from_dict(record)             # a checkpoint's, checked
  tok.special_ids                                # an `ids.SpecialIds`

`base.py` holds the interface and the byte tokenizer, `hf.py` and `sp.py` the
Hugging Face and SentencePiece ones, `factory.py` builds one by name. The
special-id names of `dllm_jax.ids` are handed on here too.
"""

from dllm_jax.ids import (BYTE_BOS_ID, BYTE_EOS_ID, BYTE_EOT_ID, BYTE_IDS,
                          BYTE_MASK_ID, BYTE_PAD_ID, BYTE_VOCAB_SIZE, SPECIAL_ROLES,
                          SpecialIds, WithSpecialIds)
from dllm_jax.tokenizers.base import ByteTokenizer, Tokenizer
from dllm_jax.tokenizers.factory import (KINDS, check_matches, check_spec, from_dict,
                                         make_tokenizer, vocab_differences)
from dllm_jax.tokenizers.hf import HFTokenizer
from dllm_jax.tokenizers.sp import SentencePieceTokenizer
