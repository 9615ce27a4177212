"""Decoding speed: our KV-cached decode (per token, against position), uncached recomputation, and transformers'
Chameleon `generate` on the same converted weights, side by side in one process.

  python benchmarks/decode.py [--batch 8] [--new_tokens 64 256] [--repeats 3]

The model is the demo's shape (d=256, 4 layers, 4 heads, vocabulary 1408) with random weights, exported with
`hf_chameleon.to_hf`. Ours generates in image mode with h*w = new_tokens - 1 codes, so every row runs the full length
(no early <eos>); transformers runs greedy with min_new_tokens = max_new_tokens for the same reason. Prints markdown.
"""
import argparse
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from unimodal_jax import config as config_lib  # noqa: E402
from unimodal_jax.convert import hf_chameleon  # noqa: E402
from unimodal_jax.data import vocab as vocab_lib  # noqa: E402
from unimodal_jax.model import kv_cache  # noqa: E402
from unimodal_jax.model.transformer import Transformer  # noqa: E402
from unimodal_jax.sample import decode  # noqa: E402
from unimodal_jax.train import state as state_lib  # noqa: E402

PROMPT_LEN = 16


def best_of(fn, repeats: int) -> float:
  """The fastest of `repeats` timed calls (after one untimed warm-up call that compiles)."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return min(times)


def ours_generate(sampler, params, prompts, new_tokens, repeats):
  """(prefill s, decode s per token): image mode, exactly new_tokens per row."""
  sampler.codes_per_image = new_tokens - 1
  options = decode.Options(mode="image", temperature=0.0)
  rows = decode.conditional_prompts(prompts, options, sampler.grammar("image"))
  padded = decode.pad_rows(rows, "left")
  max_len = padded["tokens"].shape[1] + new_tokens
  prefill = lambda: sampler._prefill(max_len)(params, padded["tokens"], padded["positions"],  # noqa: E731
                                              padded["segment_ids"], padded["last"])
  prefill_s = best_of(prefill, repeats)
  total = best_of(lambda: sampler.generate(params, prompts, options).tokens, repeats)
  return prefill_s, (total - prefill_s) / new_tokens


def ours_step_at(model, params, vocab, batch, max_len, position, repeats):
  """One cached decode step (a jitted model call) writing slot `position` of a max_len cache. The cache is donated and
  carried from call to call, as the decode loop carries it (each call rewrites the same slot)."""
  step = jax.jit(lambda p, c, t, pos: model.apply({"params": p}, t, pos, jax.numpy.ones_like(t), vocab.modality(t),
                                                  cache=c.replace(index=jax.numpy.int32(position))),
                 donate_argnums=1)
  cache = kv_cache.init(model.config, batch, max_len)
  cache = jax.tree.map(lambda x: x.copy(), cache)  # k and v may share one zeros buffer; donation needs two
  carried = [cache.replace(segment_ids=cache.segment_ids.at[:, :position].set(1))]
  tokens, positions = np.full((batch, 1), 5, np.int32), np.full((batch, 1), position, np.int32)

  def call():
    logits, carried[0] = step(params, carried[0], tokens, positions)
    return logits
  return best_of(call, repeats)


def uncached_step_at(model, params, vocab, batch, length, repeats):
  """Recomputing the whole prefix for one new token: a forward pass over `length` tokens, last logits only."""
  forward = jax.jit(lambda p, t: model.apply({"params": p}, t, np.broadcast_to(np.arange(length), t.shape),
                                             jax.numpy.ones_like(t), vocab.modality(t),
                                             logits_at=np.full(t.shape[0], length - 1, np.int32)))
  tokens = np.full((batch, length), 5, np.int32)
  return best_of(lambda: forward(params, tokens), repeats)


def transformers_generate(hf_dir, prompts_hf, new_tokens, repeats):
  """(prefill s, decode s per token) of transformers' greedy generate, batch at once (prompts of equal length)."""
  import torch
  import transformers
  transformers.utils.logging.set_verbosity_error()
  model = transformers.ChameleonForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
  ids = torch.from_numpy(np.stack(prompts_hf).astype(np.int64))

  def run(n):
    with torch.no_grad():
      return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                            do_sample=False)
  prefill = best_of(lambda: run(1), repeats)
  total = best_of(lambda: run(new_tokens), repeats)
  return prefill, (total - prefill) / (new_tokens - 1)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--new_tokens", type=int, nargs="+", default=[64, 256])
  parser.add_argument("--positions", type=int, nargs="+", default=[16, 128, 512, 1008])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--skip_transformers", action="store_true")
  args = parser.parse_args()

  config = config_lib.load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "demo.py"))
  m, vocab = config.model, vocab_lib.from_config(config)
  model = Transformer(m)
  params = state_lib.init_params(model, jax.random.key(0))
  rng = np.random.default_rng(0)
  prompts = [np.concatenate([[vocab_lib.BOS_ID], rng.integers(3, vocab.text_size, PROMPT_LEN - 1)]).astype(np.int32)
             for _ in range(args.batch)]
  sampler = decode.Sampler(m, vocab, codes_per_image=1)
  print(f"CPU: {os.cpu_count()} cores, jax {jax.__version__}; d={m.embed_dim}, {m.num_layers} layers, "
        f"vocabulary {m.vocab_size}, batch {args.batch}, prompt {PROMPT_LEN} tokens, float32\n")

  print("| decode step at cache position (max_len 1040) | ours, cached (ms) | uncached: forward over the prefix (ms) |")
  print("|---|---|---|")
  for position in args.positions:
    cached = ours_step_at(model, params, vocab, args.batch, 1040, position, args.repeats)
    uncached = uncached_step_at(model, params, vocab, args.batch, position + 1, args.repeats)
    print(f"| {position} | {cached * 1e3:.2f} | {uncached * 1e3:.2f} |", flush=True)

  with tempfile.TemporaryDirectory() as hf_dir:
    if not args.skip_transformers:
      hf_id_of = np.arange(m.vocab_size)  # our ids are its ids on export
      hf_chameleon.to_hf(jax.tree.map(np.asarray, params), m, vocab, hf_dir)
    print("\n| new tokens | ours: prefill (ms) | ours: per token (ms) | transformers: prefill (ms) | "
          "transformers: per token (ms) | speed-up per token |")
    print("|---|---|---|---|---|---|")
    for n in args.new_tokens:
      prefill, per_token = ours_generate(sampler, params, prompts, n, args.repeats)
      row = f"| {n} | {prefill * 1e3:.1f} | {per_token * 1e3:.2f} |"
      if args.skip_transformers:
        print(row + " | | |", flush=True)
        continue
      hf_prefill, hf_per_token = transformers_generate(hf_dir, [hf_id_of[p] for p in prompts], n, args.repeats)
      print(row + f" {hf_prefill * 1e3:.1f} | {hf_per_token * 1e3:.2f} | {hf_per_token / per_token:.1f}x |", flush=True)


if __name__ == "__main__":
  main()
