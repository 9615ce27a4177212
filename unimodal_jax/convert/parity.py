"""The conversion self-checks: our JAX logits against transformers' (or the PyTorch MoT reference's) on a random
interleaved batch, in float32.

transformers' Chameleon forward sets image-token logits to the dtype minimum (it shipped for understanding), so
its full logits are taken as its lm_head applied to the last hidden state. Needs torch; not used in training.
"""
import numpy as np

from unimodal_jax.convert import tensors, vocab_map
from unimodal_jax import extras
from unimodal_jax.data import vocab as vocab_lib
from unimodal_jax.data.batch import PackedBatch
from unimodal_jax.model.transformer import Transformer, batch_inputs


def interleaved_tokens(vocab, rows: int, seq_len: int, rng) -> np.ndarray:
  """[rows, seq_len] of our ids: random text with one image (<boi>, seq_len // 2 codes, <eoi>) inside."""
  tokens = rng.integers(len(vocab_lib.TEXT_SPECIAL_TOKENS), vocab.text_size, size=(rows, seq_len))
  for row in tokens:
    image = vocab.image_tokens(rng.integers(0, vocab.num_image_codes, size=seq_len // 2))
    row[seq_len // 4:seq_len // 4 + len(image)] = image
  return tokens.astype(np.int32)


def single_document_batch(tokens: np.ndarray, vocab) -> PackedBatch:
  """Each row one unpadded document: segment 1, positions 0..seq_len-1."""
  ones = np.ones_like(tokens)
  positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
  return PackedBatch(tokens=tokens, targets=tokens, segment_ids=ones, positions=positions,
                     modality=vocab.modality(tokens), loss_weights=ones.astype(np.float32))


def our_logits(params, model_config, vocab, tokens) -> np.ndarray:
  m = model_config.copy_and_resolve_references()
  m.dtype = "float32"
  return np.asarray(Transformer(m).apply({"params": params}, **batch_inputs(single_document_batch(tokens, vocab))))


def hf_logits(hf_dir: str, tokens: np.ndarray) -> np.ndarray:
  """transformers' full logits for our `tokens`, with the vocabulary axis in our id order."""
  torch = extras.require("torch", "--self_check against transformers")
  ChameleonForConditionalGeneration = extras.require("transformers", "--self_check").ChameleonForConditionalGeneration

  layout = vocab_map.layout_from_config(tensors.read_config(hf_dir))
  hf_id_of, _ = vocab_map.permutation(layout)
  model = ChameleonForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
  with torch.no_grad():
    hidden = model.model(input_ids=torch.from_numpy(hf_id_of[tokens])).last_hidden_state
    return model.lm_head(hidden).numpy()[..., hf_id_of]


def max_relative_error(hf_dir: str, params, model_config, vocab, *, rows=2, seq_len=64, seed=0) -> float:
  """max |ours - transformers'| / max |transformers'| over all logits of a random interleaved batch."""
  tokens = interleaved_tokens(vocab, rows, seq_len, np.random.default_rng(seed))
  theirs = hf_logits(hf_dir, tokens)
  return float(np.abs(our_logits(params, model_config, vocab, tokens) - theirs).max() / np.abs(theirs).max())


def packed_interleaved_batch(vocab, rows: int, seq_len: int, rng) -> PackedBatch:
  """Rows of two documents each (text with an image inside) and padding: segments, restarting positions, and
  interleaved modalities, the inputs a Mixture-of-Transformers routes on."""
  tokens, segment_ids, positions = (np.zeros((rows, seq_len), np.int32) for _ in range(3))
  lengths = (seq_len // 2, seq_len // 2 - seq_len // 8)  # the rest of the row is padding (segment 0)
  for r in range(rows):
    at = 0
    for segment, n in enumerate(lengths, start=1):
      doc = interleaved_tokens(vocab, 1, n, rng)[0]
      tokens[r, at:at + n], segment_ids[r, at:at + n], positions[r, at:at + n] = doc, segment, np.arange(n)
      at += n
  weights = (segment_ids > 0).astype(np.float32)
  return PackedBatch(tokens=tokens, targets=tokens, segment_ids=segment_ids, positions=positions,
                     modality=vocab.modality(tokens), loss_weights=weights)


def torch_logits(torch_dir: str, batch: PackedBatch) -> np.ndarray:
  """The PyTorch reference's (convert/torch_mot.py) float32 logits for a packed batch."""
  torch = extras.require("torch", "--self_check against the PyTorch MoT reference")
  from unimodal_jax.convert import torch_mot

  model = torch_mot.load(torch_dir)
  inputs = [torch.from_numpy(np.asarray(x, np.int64)) for x in (batch.tokens, batch.modality, batch.segment_ids,
                                                                  batch.positions)]
  with torch.no_grad():
    return model(*inputs).numpy()


def max_relative_error_torch(torch_dir: str, params, model_config, vocab, *, rows=2, seq_len=64, seed=0) -> float:
  """max |ours - PyTorch reference's| / max |reference's| over all logits of a random packed interleaved batch."""
  batch = packed_interleaved_batch(vocab, rows, seq_len, np.random.default_rng(seed))
  m = model_config.copy_and_resolve_references()
  m.dtype = "float32"
  ours = np.asarray(Transformer(m).apply({"params": params}, **batch_inputs(batch)))
  theirs = torch_logits(torch_dir, batch)
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())
