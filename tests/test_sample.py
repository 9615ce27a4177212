"""KV-cached sampling: cached logits against full forward passes (dense and MoT, mixed prompt lengths, one device and
an 8-device mesh), constrained decoding as a property over random logits, guidance, CD-K, seeds, and the logit
processors against transformers'."""
import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from test_model import load_config
from unimodal_jax.config import ConfigError
from unimodal_jax.data import vocab as vocab_lib
from unimodal_jax.data.vocab import BOS_ID, EOS_ID, PAD_ID, from_config
from unimodal_jax.model import kv_cache
from unimodal_jax.model.transformer import Transformer
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.sample import checks, constraints, decode, logits as logits_lib
from unimodal_jax.train import state as state_lib

CODES = 16  # tiny: 4x4 codes per image


@functools.cache
def setup(name):
  c = load_config(name)
  model = Transformer(c.model)
  return c, from_config(c), model, state_lib.init_params(model, jax.random.key(0), c.data.seq_len)


def prompts_and_feed(vocab, rng):
  """Four prompts of lengths 4, 11, 7, 1 (one with an image in it) and 6 tokens to feed each row: text, then an
  image's <boi> and codes, so a MoT routes the fed tokens to both experts."""
  prompts = [np.concatenate([[BOS_ID], rng.integers(3, vocab.text_size, n)]).astype(np.int32) for n in (3, 10, 6, 0)]
  prompts[1][2:8] = np.concatenate([[vocab.boi_id], vocab.id_of([1, 2, 3, 4]), [vocab.eoi_id]])
  feed = np.stack([np.concatenate([rng.integers(3, vocab.text_size, 2), [vocab.boi_id],
                                   vocab.id_of(rng.integers(0, vocab.num_image_codes, 3))]) for _ in prompts])
  return prompts, feed.astype(np.int32)


def full_forward_logits(model, params, vocab, prompts, fed):
  """The reference: one forward pass of the training path over each unpadded prompt + its fed tokens (rows padded
  after their end); per row, the logits at the prompt's last token and at every fed token."""
  seqs = [np.concatenate([p, f]) for p, f in zip(prompts, fed)]
  batch = decode.pad_rows(seqs, "right")
  logits = jax.jit(model.apply)({"params": params}, batch["tokens"], batch["positions"], batch["segment_ids"],
                                vocab.modality(batch["tokens"]))
  return [np.asarray(logits[i, len(p) - 1:len(q)]) for i, (p, q) in enumerate(zip(prompts, seqs))]


def cached_logits(model, params, vocab, prompts, feed, padding):
  """Prefill the padded prompts into a cache, then feed one token per call: [rows, 1 + steps, vocab]."""
  padded = decode.pad_rows(prompts, padding)
  cache = kv_cache.init(model.config, len(prompts), padded["tokens"].shape[1] + feed.shape[1])
  apply = jax.jit(functools.partial(model.apply, {"params": params}))
  logits, cache = apply(padded["tokens"], padded["positions"], padded["segment_ids"],
                        vocab.modality(padded["tokens"]), cache=cache, logits_at=padded["last"])
  steps = [logits[:, 0]]
  positions = np.array([len(p) for p in prompts], np.int32)
  for t in range(feed.shape[1]):
    token = feed[:, t:t + 1]
    logits, cache = apply(token, (positions + t)[:, None], np.ones_like(token), vocab.modality(token), cache=cache)
    steps.append(logits[:, 0])
  return np.stack([np.asarray(s) for s in steps], axis=1)


def assert_cached_equals_full(name, mesh_shape):
  c, vocab, model, params = setup(name)
  prompts, feed = prompts_and_feed(vocab, np.random.default_rng(0))
  expected = full_forward_logits(model, params, vocab, prompts, feed)
  context, placed = contextlib.nullcontext(), params
  if mesh_shape:
    mesh_config = c.mesh.copy_and_resolve_references()
    mesh_config.data, mesh_config.fsdp, mesh_config.tensor = mesh_shape
    mesh, rules = mesh_lib.create_mesh(mesh_config), mesh_lib.axis_rules(c)
    shardings = mesh_lib.logical_to_shardings(state_lib.param_logical_specs(model, 8), mesh, rules)
    context, placed = mesh_lib.mesh_context(mesh, rules), jax.device_put(params, shardings)
  with context:
    for padding in decode.PADDING:
      got = cached_logits(model, placed, vocab, prompts, feed, padding)
      for row, want in enumerate(expected):
        error = np.abs(got[row] - want).max() / np.abs(want).max()
        assert error < 1e-5, f"{name} {padding}-padded row {row}: relative error {error:.2e}"


@pytest.mark.parametrize("name", ["tiny", "mot_tiny"])
def test_cached_logits_equal_full_forward_at_every_step(name):
  assert_cached_equals_full(name, None)


@pytest.mark.parametrize("name", ["tiny", "mot_tiny"])
def test_cached_logits_equal_full_forward_on_an_8_device_mesh(name):
  """data 2 x fsdp 2 x tensor 2: rows over ('data', 'fsdp'), the two kv heads over 'tensor'."""
  assert_cached_equals_full(name, (2, 2, 2))


def test_guided_greedy_image_follows_the_full_forward_of_both_streams():
  """MoT, image mode, CFG 3, greedy: every code is the argmax over codes of uncond + 3 (cond - uncond), where cond
  and uncond are full forward passes over '<bos> prompt <boi> codes so far' and '<bos> <boi> codes so far'."""
  c, vocab, model, params = setup("mot_tiny")
  prompts, _ = prompts_and_feed(vocab, np.random.default_rng(1))
  prompts = [prompts[0], prompts[2]]  # no image in the prompt: two streams
  sampler = decode.Sampler(c.model, vocab, CODES)
  samples = sampler.generate(params, prompts, decode.Options(mode="image", temperature=0.0, cfg=3.0))
  assert samples.lengths.tolist() == [CODES + 1] * 2
  codes = vocab.is_image(np.arange(c.model.vocab_size))
  assert all(p[-1] == vocab.boi_id for p in samples.prompts) and (samples.tokens[:, CODES] == vocab.eoi_id).all()
  fed = [row[:CODES - 1] for row in samples.tokens]
  null = [np.array([BOS_ID, vocab.boi_id])] * len(fed)
  references = zip(full_forward_logits(model, params, vocab, samples.prompts, fed),
                   full_forward_logits(model, params, vocab, null, fed))
  for (cond, uncond), row in zip(references, samples.tokens):
    guided = np.where(codes, uncond + 3.0 * (cond - uncond), -np.inf)
    np.testing.assert_array_equal(np.argmax(guided, axis=-1), row[:CODES])


def test_left_and_right_padded_prompts_give_the_same_samples():
  c, vocab, _, params = setup("tiny")
  prompts, _ = prompts_and_feed(vocab, np.random.default_rng(2))
  sampler = decode.Sampler(c.model, vocab, CODES)
  left, right = (sampler.generate(params, prompts, decode.Options(mode="interleaved", max_new_tokens=8, padding=p),
                                  seed=3) for p in decode.PADDING)
  np.testing.assert_array_equal(left.tokens, right.tokens)


def test_same_seed_same_output_other_seed_other_output():
  c, vocab, _, params = setup("tiny")
  prompts, _ = prompts_and_feed(vocab, np.random.default_rng(3))
  sampler = decode.Sampler(c.model, vocab, CODES)
  options = decode.Options(mode="interleaved", max_new_tokens=10, temperature=1.0, top_k=50, top_p=0.9)
  a, b, other = (sampler.generate(params, prompts, options, seed=s) for s in (5, 5, 6))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, other.tokens)


def test_guidance_at_scale_one_and_cd_k_without_its_filter_equal_plain_sampling():
  """Image mode with an image in one prompt (three streams: conditional, image-conditioned, unconditional)."""
  c, vocab, _, params = setup("tiny")
  prompts, _ = prompts_and_feed(vocab, np.random.default_rng(4))
  sampler = decode.Sampler(c.model, vocab, CODES)
  run = lambda **kw: sampler.generate(params, prompts, decode.Options(mode="image", **kw), seed=7).tokens  # noqa
  plain = run()
  np.testing.assert_array_equal(run(cfg=1.0, cfg_image=1.0), plain)
  np.testing.assert_array_equal(run(cd_k=4, cd_alpha=0.0), plain)
  assert not np.array_equal(run(cfg=3.0, cfg_image=1.5), plain)


def test_guidance_streams_follow_chameleon():
  vocab = vocab_lib.Vocab(text_size=10, num_image_codes=4)
  image = vocab.image_tokens([0, 1])
  prompt = np.concatenate([[BOS_ID, 5, 6], image, [7, vocab.boi_id], vocab.id_of([3])]).astype(np.int32)
  cond, image_cond, uncond = decode.guidance_streams([prompt], vocab, image_stream=True)
  np.testing.assert_array_equal(cond[0], prompt)
  np.testing.assert_array_equal(image_cond[0], np.concatenate([[BOS_ID], image, [vocab.boi_id], vocab.id_of([3])]))
  np.testing.assert_array_equal(uncond[0], [BOS_ID, vocab.boi_id, vocab.id_of([3])[0]])


# ---------------------------------------------------------------- constrained decoding, over random logits

GRAMMAR_VOCAB = vocab_lib.Vocab(text_size=8, num_image_codes=5)  # ids: text 0..7, <boi> 8, <eoi> 9, codes 10..14
GRAMMAR_CODES = 3


@functools.cache
def grammar_step(mode, temperature, cd_k):
  grammar = constraints.Grammar(GRAMMAR_VOCAB, GRAMMAR_CODES, 20, mode)  # ids 15..19: the model's padding rows
  options = decode.Options(mode=mode, temperature=temperature, cd_k=cd_k, cd_alpha=0.5)

  def step(logits, image_left, key):
    token = decode.next_tokens(logits[None], image_left, jnp.zeros(logits.shape, bool), None, key, grammar, options)
    return token, constraints.advance(grammar, image_left, token), constraints.stops(grammar, token)
  return jax.jit(step)


def check_row(tokens, mode, image_left):
  """Parse one generated row; raise AssertionError at the first token the grammar forbids."""
  v = GRAMMAR_VOCAB
  for i, t in enumerate(tokens):
    if image_left > 0:
      assert v.is_image(t), (i, t, "a code was due")
      image_left -= 1
    elif image_left == 0:
      assert t == v.eoi_id, (i, t, "<eoi> was due")
      image_left = constraints.OUTSIDE
      if mode == "image":
        assert i == len(tokens) - 1, "image mode stops at <eoi>"
    else:
      assert mode != "image", "image mode never leaves its image"
      assert 3 <= t < v.text_size or t == EOS_ID or (t == v.boi_id and mode == "interleaved"), (i, t, mode)
      image_left = GRAMMAR_CODES if t == v.boi_id else image_left
  assert tokens[-1] in (EOS_ID, v.eoi_id) or len(tokens) == 40


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), mode=st.sampled_from(constraints.MODES),
       temperature=st.sampled_from([0.0, 1.0, 4.0]), cd_k=st.sampled_from([0, 3]))
def test_constrained_decoding_never_emits_an_invalid_token(seed, mode, temperature, cd_k):
  """Random logits that favour forbidden ids (<pad>, <bos>, padding rows, codes in text, text in images): every
  image has exactly h*w codes closed by <eoi>, text mode never emits a code, image mode stops at its <eoi>."""
  rng = np.random.default_rng(seed)
  rows = 6
  start = {"image": np.full(rows, GRAMMAR_CODES), "text": np.full(rows, -1),
           "interleaved": rng.integers(-1, GRAMMAR_CODES + 1, rows)}[mode].astype(np.int32)
  image_left, done, out = start, np.zeros(rows, bool), [[] for _ in range(rows)]
  step = grammar_step(mode, temperature, cd_k)
  for t in range(40):
    logits = rng.normal(size=(rows, 20)).astype(np.float32) * 4
    logits[:, [PAD_ID, BOS_ID, 15, 16, 17, 18, 19]] += 20  # the forbidden ids look best
    token, image_left, stop = (np.asarray(x) for x in step(logits, image_left, jax.random.key(t)))
    for r in np.flatnonzero(~done):
      out[r].append(int(token[r]))
    done |= stop
    if done.all():
      break
  for r in range(rows):
    check_row(out[r], mode, int(start[r]))


def test_cd_k_keeps_only_ids_in_its_head():
  """With alpha > 0 a drawn image code's conditional probability is >= alpha x the k-th largest (CM3Leon's CD-K)."""
  grammar = constraints.Grammar(GRAMMAR_VOCAB, GRAMMAR_CODES, 20, "image")
  options = decode.Options(mode="image", temperature=3.0, cd_k=2, cd_alpha=0.6)
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(1, 64, 20)).astype(np.float32) * 2
  left = np.full(64, GRAMMAR_CODES, np.int32)
  tokens = np.asarray(decode.next_tokens(logits, left, np.zeros((64, 20), bool), None, jax.random.key(0), grammar,
                                         options))
  codes = GRAMMAR_VOCAB.is_image(np.arange(20))
  probs = np.asarray(jax.nn.softmax(np.where(codes, logits[0], -np.inf), axis=-1))
  kth = np.sort(probs, axis=-1)[:, -2]
  assert np.all(probs[np.arange(64), tokens] >= 0.6 * kth - 1e-7)
  assert len(set(tokens.tolist())) > 1  # still sampling


def test_logit_processors_match_transformers():
  torch = pytest.importorskip("torch", reason="the torch extra is not installed")
  generation = pytest.importorskip("transformers").generation
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 50)).astype(np.float32) * 3
  ids = rng.integers(0, 50, (4, 7))
  seen = np.zeros((4, 50), bool)
  np.put_along_axis(seen, ids, True, axis=1)
  t_logits, t_ids = torch.from_numpy(logits), torch.from_numpy(ids)
  pairs = [
      (logits_lib.penalize_repetition(logits, seen, 1.3), generation.RepetitionPenaltyLogitsProcessor(1.3)),
      (logits_lib.top_k_filter(logits, 5), generation.TopKLogitsWarper(5)),
      (logits_lib.top_p_filter(logits, 0.8), generation.TopPLogitsWarper(0.8))]
  for ours, theirs in pairs:
    np.testing.assert_allclose(np.asarray(ours), theirs(t_ids, t_logits.clone()).numpy(), rtol=1e-6)


def test_guide_at_scale_one_is_the_conditional():
  rng = np.random.default_rng(1)
  streams = rng.normal(size=(3, 2, 9)).astype(np.float32)
  np.testing.assert_allclose(logits_lib.guide(streams, 1.0, 1.0), streams[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(logits_lib.guide(streams[[0, 2]], 2.0, 1.0), 2 * streams[0] - streams[2], rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("key, value", [("mode", "video"), ("num_samples", 0), ("top_p", 0.0), ("cfg", -1.0)])
def test_bad_sample_config_is_refused_naming_the_key(key, value):
  c = load_config("tiny")
  c.sample.every = 5
  c.sample[key] = value
  with pytest.raises(ConfigError, match=f"sample.{key}"):
    checks.check(c)


def test_bad_options_and_prompts_are_refused():
  c, vocab, _, params = setup("tiny")
  sampler = decode.Sampler(c.model, vocab, CODES)
  with pytest.raises(ValueError, match="next_segment"):
    sampler.generate(params, [[BOS_ID]], decode.Options(mode="text", next_segment="image"))
  too_long = np.concatenate([[BOS_ID, vocab.boi_id], vocab.id_of(np.zeros(CODES + 1, int))])
  with pytest.raises(ValueError, match="open image has 17 codes"):
    sampler.generate(params, [too_long], decode.Options(mode="image"))
