"""unimodal-train-text-tokenizer: a BPE streamed from JSONL and text files with the contract's special ids, and a
transformers tokenizer imported as the text tokenizer giving the ids transformers gives."""
import json
import os
import subprocess
import sys

import pydoc_data.topics
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from unimodal_jax.data import tokenizer as tokenizer_lib
from unimodal_jax.data import vocab as vocab_lib

TOPICS = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
SAMPLES = ["The with statement wraps a block.", "Ünïcödé, emoji 🙂 and  two spaces\ttab.", "x = [i ** 2 for i in r]"]


def cli(*args):
  code = "import sys; sys.argv[0] = 'unimodal-train-text-tokenizer'; " \
         "from unimodal_jax.cli.train_text_tokenizer import run; run()"
  return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_trains_from_a_glob_of_jsonl_and_text_files_with_the_special_ids(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  half = len(TOPICS) // 2
  (corpus / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TOPICS[:half]))
  (corpus / "b.jsonl").write_text(json.dumps({"segments": [{"text": "caption"}, {"image": "x.png"}]}) + "\n")
  (corpus / "c.txt").write_text("\n".join(t.replace("\n", " ") for t in TOPICS[half:]))
  out = cli(f"--input={corpus}/*", "--vocab_size=2000", f"--out={tmp_path / 'tok'}")
  assert out.returncode == 0, out.stderr[-2000:]
  tok = tokenizer_lib.TextTokenizer.load(str(tmp_path / "tok"))
  assert tok.size == 2000 and f"{tok.size} ids" in out.stdout
  assert [tok._tokenizer.token_to_id(t) for t in vocab_lib.TEXT_SPECIAL_TOKENS] == [0, 1, 2]
  for text in SAMPLES:
    ids = tok.encode(text)
    assert ids.min() >= 3 and tok.decode(ids) == text
  assert len(tok.encode(TOPICS[0])) < 0.4 * len(TOPICS[0].encode())  # it learned merges from the corpus
  paths = sorted(str(p) for p in corpus.iterdir())  # streamed training equals training on the texts in memory
  direct = tokenizer_lib.TextTokenizer.train(list(tokenizer_lib.corpus_texts(paths)), 2000)
  assert direct.fingerprint() == tok.fingerprint()


def test_a_bad_jsonl_line_and_an_empty_glob_are_named(tmp_path):
  (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"txt": "typo"}\n')
  out = cli(f"--input={tmp_path}/*.jsonl", "--vocab_size=300", f"--out={tmp_path / 'tok'}")
  assert out.returncode == 1 and f"{tmp_path}/bad.jsonl:2: expected" in out.stderr
  out = cli(f"--input={tmp_path}/*.none", f"--out={tmp_path / 'tok'}")
  assert out.returncode == 1 and "matches no files" in out.stderr


def hf_directory(path, specials):
  """A transformers fast tokenizer (byte-level BPE, other special names than ours) saved with save_pretrained."""
  transformers = pytest.importorskip("transformers", reason="the torch extra (transformers) is not installed")
  bpe = tokenizers.Tokenizer(models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  bpe.decoder = decoders.ByteLevel()
  bpe.train_from_iterator(TOPICS, trainers.BpeTrainer(vocab_size=1500, special_tokens=specials, show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  names = dict(zip(("pad_token", "bos_token", "eos_token"), ("<pad>", "<s>", "</s>")))
  hf = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, **names)
  hf.save_pretrained(str(path))
  return transformers.AutoTokenizer.from_pretrained(str(path))


def test_an_imported_transformers_tokenizer_gives_the_ids_transformers_gives(tmp_path):
  hf = hf_directory(tmp_path / "hf", ["<pad>", "<s>", "</s>"])
  out = cli(f"--from_transformers={tmp_path / 'hf'}", f"--out={tmp_path / 'tok'}")
  assert out.returncode == 0, out.stderr[-2000:]
  tok = tokenizer_lib.TextTokenizer.load(str(tmp_path / "tok"))
  assert tok.size == len(hf) and tok.specials == ("<pad>", "<s>", "</s>")
  for text in SAMPLES + TOPICS[:20]:
    want = hf(text, add_special_tokens=False)["input_ids"]
    assert tok.encode(text).tolist() == want
    assert tok.decode(want) == hf.decode(want)


def test_a_transformers_tokenizer_with_its_specials_elsewhere_is_refused(tmp_path):
  hf_directory(tmp_path / "hf", ["<unk>", "<pad>", "<s>", "</s>"])
  out = cli(f"--from_transformers={tmp_path / 'hf'}", f"--out={tmp_path / 'tok'}")
  assert out.returncode == 1 and "needs <pad>, <bos>, <eos> at ids [0, 1, 2]" in out.stderr
  assert "('<pad>', '<s>', '</s>') have ids [1, 2, 3]" in out.stderr and not os.path.exists(tmp_path / "tok")
