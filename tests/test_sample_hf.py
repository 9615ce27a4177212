"""Greedy decoding of a transformers Chameleon imported with from-hf emits exactly the token ids of transformers' own
`generate(do_sample=False)`: an independent implementation of the model and of the decode loop."""
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tokenizers

from test_convert_hf import IMPORT_CASES, model_config, save_transformers_model
from unimodal_jax.convert import hf_chameleon, tensors, vocab_map
from unimodal_jax.data.vocab import BOS_ID, PAD_ID
from unimodal_jax.sample import decode

torch = pytest.importorskip("torch", reason="the torch extra is not installed")
transformers = pytest.importorskip("transformers")

NEW_TOKENS = 12


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  hf_dir = str(tmp_path_factory.mktemp("hf"))
  save_transformers_model(hf_dir, **IMPORT_CASES["untied"])
  params, overrides, vocab = hf_chameleon.from_hf(hf_dir)
  hf_id_of, _ = vocab_map.permutation(vocab_map.layout_from_config(tensors.read_config(hf_dir)))
  return hf_dir, params, model_config(**overrides), vocab, hf_id_of


def transformers_greedy(hf_dir, prompts_hf, suppress):
  """Each prompt alone (no padding) through transformers' generate; the new ids only."""
  model = transformers.ChameleonForConditionalGeneration.from_pretrained(hf_dir).eval()
  out = []
  with torch.no_grad():
    for p in prompts_hf:
      ids = model.generate(torch.from_numpy(p[None].astype(np.int64)), max_new_tokens=NEW_TOKENS, do_sample=False,
                           suppress_tokens=suppress, attention_mask=torch.ones((1, len(p)), dtype=torch.long))
      out.append(ids[0, len(p):].numpy())
  return out


@pytest.mark.parametrize("padding", decode.PADDING)
def test_greedy_text_equals_transformers_generate(imported, padding):
  hf_dir, params, m, vocab, hf_id_of = imported
  rng = np.random.default_rng(0)
  prompts = [np.concatenate([[BOS_ID], rng.integers(3, vocab.text_size, n)]).astype(np.int32) for n in (1, 6, 11)]
  sampler = decode.Sampler(m, vocab, codes_per_image=4)
  ours = sampler.generate(jax.tree.map(np.asarray, params), prompts,
                          decode.Options(mode="text", max_new_tokens=NEW_TOKENS, temperature=0.0, padding=padding))
  # Text mode never emits <pad>, <bos>, <boi>, <eoi> or the unnamed padding rows; transformers' Chameleon masks the
  # image codes itself. The same ids are suppressed on its side.
  banned = [PAD_ID, BOS_ID, vocab.boi_id, vocab.eoi_id, *range(vocab.size, m.vocab_size)]
  theirs = transformers_greedy(hf_dir, [hf_id_of[p] for p in prompts], hf_id_of[banned].tolist())
  assert any(len(t) == NEW_TOKENS for t in theirs)
  for row, (tokens, n, want) in enumerate(zip(ours.tokens, ours.lengths, theirs)):
    np.testing.assert_array_equal(hf_id_of[tokens[:n]], want, err_msg=f"prompt {row}")


def test_cli_samples_from_a_transformers_directory_as_transformers_does(imported, tmp_path):
  """`unimodal-sample --hf_dir` (the user's path to an imported checkpoint): greedy text through the CLI, with the
  directory's own tokenizer.json (here a word-level one naming each text id), equals transformers' generate."""
  hf_dir, _, _, vocab, hf_id_of = imported
  words = {f"t{ours}": int(hf_id_of[ours]) for ours in range(3, vocab.text_size)}
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(words, unk_token="t3"))
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tokenizer.save(os.path.join(hf_dir, "tokenizer.json"))
  out_dir = tmp_path / "samples"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user's machine
  cmd = [os.path.join(os.path.dirname(sys.executable), "unimodal-sample"), f"--hf_dir={hf_dir}", "--prompt=t5 t9 t14",
         "--mode=text", "--temperature=0", f"--max_new_tokens={NEW_TOKENS}", "--num_samples=1", f"--out_dir={out_dir}"]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  ours = np.load(out_dir / "tokens.npy")[0]
  m = transformers.AutoConfig.from_pretrained(hf_dir)
  banned = [PAD_ID, BOS_ID, vocab.boi_id, vocab.eoi_id, *range(vocab.size, m.vocab_size)]
  prompt = np.array([BOS_ID, 5, 9, 14], np.int32)
  theirs = transformers_greedy(hf_dir, [hf_id_of[prompt]], hf_id_of[banned].tolist())[0]
  assert len(theirs) > 0
  np.testing.assert_array_equal(hf_id_of[ours[:len(theirs)]], theirs)
