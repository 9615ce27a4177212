"""The tokenizers of an ingest run and the plan entry that names them: from a run config (unimodal-make-shards: the
image tokenizer of `config.vq`) or from a saved VQGAN directory (unimodal-tokenize, on this process's devices)."""
import hashlib

from etils import epath

from unimodal_jax.data import tokenizer as tokenizer_lib
from unimodal_jax.data import vocab as vocab_lib
from unimodal_jax.ingest.build import Tokenizers
from unimodal_jax.vq import codes
from unimodal_jax.vq import weights as vq_weights


def _file_sha256(path: str) -> str:
  return hashlib.sha256(epath.Path(path).read_bytes()).hexdigest()


def from_config(config, text_tokenizer_path: str, **limits) -> tuple[Tokenizers, dict]:
  """(Tokenizers, plan) for `config`: its vocabulary, vq.image_size and the image tokenizer at vq.tokenizer_path."""
  vocab = vocab_lib.from_config(config)
  text = tokenizer_lib.TextTokenizer.load(text_tokenizer_path, vocab)
  encode = codes.image_tokenizer(config)
  image_sha = codes.fingerprint(config.vq.tokenizer_path) if config.vq.kind == "vqgan" else _file_sha256(
      config.vq.tokenizer_path)
  tok = Tokenizers(text=text, encode=encode, image_size=config.vq.image_size,
                   grid=config.vq.image_size // config.vq.patch_size, vocab=vocab,
                   max_document_tokens=config.data.max_document_tokens, **limits)
  return tok, {"text_tokenizer": text.fingerprint(), "image_tokenizer": {"kind": config.vq.kind, "sha256": image_sha}}


def from_vqgan(text_tokenizer_path: str, vqgan_dir: str, *, batch_size: int, max_document_tokens: int, devices=None,
               **limits) -> tuple[Tokenizers, dict]:
  """(Tokenizers, plan) for the VQGAN saved in `vqgan_dir`, encoding on `devices` (default: all); text ids must lie
  below the text tokenizer's size, codes below the VQGAN's codebook size."""
  image_size, patch_size, num_codes = codes.vqgan_dims(vqgan_dir)
  text = tokenizer_lib.TextTokenizer.load(text_tokenizer_path)
  vocab = vocab_lib.Vocab(text_size=text.size, num_image_codes=num_codes)
  params, model = vq_weights.load_tokenizer(vqgan_dir)
  encode = codes.make_encoder(params, model, batch_size, devices)
  tok = Tokenizers(text=text, encode=encode, image_size=image_size, grid=image_size // patch_size, vocab=vocab,
                   max_document_tokens=max_document_tokens, **limits)
  return tok, {"text_tokenizer": text.fingerprint(),
               "image_tokenizer": {"kind": "vqgan", "sha256": codes.fingerprint(vqgan_dir)}}
