"""`unimodal-train-text-tokenizer`: a byte-level BPE trained on your corpus, or a transformers tokenizer imported, as
the text tokenizer of a run (ids 0, 1, 2 = <pad>, <bos>, <eos>; the run's vocab.text_size must be >= its size).

  unimodal-train-text-tokenizer --input 'corpus/*.jsonl' --vocab_size 32000 --out runs/text_tok
  unimodal-train-text-tokenizer --from_transformers exported_chameleon/ --out runs/text_tok

--input: a glob (local or gs://) of JSONL files ({"text": ...} or {"segments": [{"text": ...}, ...]}) or plain text
files (one text per line), streamed. --out holds tokenizer.json: pass it as --text_tokenizer to unimodal-tokenize and
unimodal-make-shards.
"""
import sys

from absl import app, flags

from unimodal_jax.cli import common
from unimodal_jax.data import tokenizer as tokenizer_lib

_INPUT = flags.DEFINE_string("input", None, "Glob of JSONL or text files to train on.")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 32000, "Text ids to learn, the 3 special ids and 256 bytes included.")
_FROM_TRANSFORMERS = flags.DEFINE_string("from_transformers", None, "A transformers tokenizer directory to import "
                                         "instead of training (its pad/bos/eos must have ids 0, 1, 2).")
_OUT = flags.DEFINE_string("out", None, "The tokenizer directory to write (local or gs://).")


def main():
  if not _OUT.value or (_INPUT.value is None) == (_FROM_TRANSFORMERS.value is None):
    raise app.UsageError("give --out and exactly one of --input and --from_transformers")
  try:
    if _INPUT.value:
      tokenizer = tokenizer_lib.TextTokenizer.train_files(_INPUT.value, _VOCAB_SIZE.value)
    else:
      tokenizer = tokenizer_lib.TextTokenizer.from_transformers(_FROM_TRANSFORMERS.value)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"unimodal-train-text-tokenizer: {e}")
  tokenizer.save_dir(_OUT.value)
  print(f"wrote a text tokenizer of {tokenizer.size} ids to {_OUT.value} (set vocab.text_size >= {tokenizer.size})")


def run():
  common.run(sys.modules[__name__], main)


if __name__ == "__main__":
  run()
