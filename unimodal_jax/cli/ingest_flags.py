"""The flags `unimodal-tokenize` and `unimodal-make-shards` share, defined once: absl refuses a flag defined twice in
one process (a tool or a test importing both commands). Each command adopts them as its own key flags
(`flags.adopt_module_key_flags(ingest_flags)`), so its --help lists them."""
from absl import flags

TEXT_TOKENIZER = flags.DEFINE_string("text_tokenizer", None, "A saved text tokenizer: unimodal-train-text-tokenizer's "
                                     "--out, or its tokenizer.json.")
JSONL = flags.DEFINE_string("jsonl", None, "A JSONL file of image-caption pairs or documents (interleaved or text).")
OUT_DIR = flags.DEFINE_string("out_dir", None, "Where the document shards go (local or gs://).")
PREFIX = flags.DEFINE_string("prefix", "train", "Shard file name prefix.")
ON_BAD_RECORD = flags.DEFINE_enum("on_bad_record", "raise", ["raise", "skip"], "raise: stop naming the input; skip: "
                                  "log it, count it in the summary and go on.")

