"""KV-cached generation: prompts of different lengths -> padded rows of every guidance stream -> one jitted prefill
-> a jitted `lax.while_loop` decode that stops per row, on the run's mesh (rows over the batch axes, kv heads over
'tensor'). Every stream is fed the same chosen tokens; a MoT routes each by its modality."""
import dataclasses
import functools
import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from unimodal_jax.data import vocab as vocab_lib
from unimodal_jax.model import kv_cache
from unimodal_jax.model.transformer import Transformer
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.sample import constraints, logits as logits_lib

PADDING = ("left", "right")
NEXT_SEGMENT = ("", "image", "text")


@dataclasses.dataclass(frozen=True)
class Options:
  """How to sample (static: one compile per distinct Options, prompt length and batch)."""

  mode: str = "text"  # constraints.MODES
  max_new_tokens: int = 64  # image mode: ignored, it generates the one image's remaining codes and <eoi>
  temperature: float = 1.0  # 0: greedy
  top_k: int = 0  # 0: off
  top_p: float = 1.0  # 1: off
  repetition_penalty: float = 1.0  # on text ids already in the row (prompt included); 1: off
  cfg: float | None = None  # guidance scale of the text condition at image tokens; None: no null-condition stream
  cfg_image: float = 1.0  # ... of an image in the prompt (adds the image-conditioned stream when a prompt has one)
  cd_k: int = 0  # CM3Leon's CD-K head filter at image tokens: the k of the k-th largest probability; 0: off
  cd_alpha: float = 0.1  # ... and its alpha (0 keeps every id)
  next_segment: str = ""  # interleaved: 'image' opens an image now, 'text' forbids <boi> as the first token
  padding: str = "left"  # where prompts shorter than the longest are padded

  def check(self):
    """Raise ValueError naming the first option that cannot run."""
    problems = [
        (self.mode in constraints.MODES, "mode", f"one of {constraints.MODES}"),
        (self.max_new_tokens >= 1, "max_new_tokens", ">= 1"),
        (self.temperature >= 0, "temperature", ">= 0"),
        (self.top_k >= 0, "top_k", ">= 0"),
        (0 < self.top_p <= 1, "top_p", "in (0, 1]"),
        (self.repetition_penalty > 0, "repetition_penalty", "> 0"),
        (self.cfg is None or self.cfg >= 0, "cfg", ">= 0 or None"),
        (self.cd_k >= 0 and 0 <= self.cd_alpha <= 1, "cd_k", "cd_k >= 0 and cd_alpha in [0, 1]"),
        (self.next_segment in NEXT_SEGMENT and (not self.next_segment or self.mode == "interleaved"),
         "next_segment", f"one of {NEXT_SEGMENT}, only in mode 'interleaved'"),
        (self.padding in PADDING, "padding", f"one of {PADDING}")]
    for ok, name, expected in problems:
      if not ok:
        raise ValueError(f"sampling option {name}={getattr(self, name)!r}: must be {expected}")


@flax.struct.dataclass
class Samples:
  tokens: np.ndarray  # [b, max_new_tokens] int32 generated ids; <pad> after each row's end
  lengths: np.ndarray  # [b] tokens generated, the stopping <eos> (or image mode's <eoi>) included
  prompts: list  # the prompts as sampled (image mode: with the <boi> it appends)

  def continuations(self, vocab: vocab_lib.Vocab) -> list[np.ndarray]:
    """Each row's generated ids up to its end, after the image its prompt left open (from its <boi>), so that an
    image begun in the prompt reads whole."""
    out = []
    for prompt, row, n in zip(self.prompts, self.tokens, self.lengths):
      codes = constraints.open_image_codes(prompt, vocab)
      tail = prompt[len(prompt) - codes - 1:] if codes is not None else prompt[:0]
      out.append(np.concatenate([tail, row[:n]]).astype(np.int32))
    return out


def conditional_prompts(prompts, options: Options, grammar: constraints.Grammar) -> list[np.ndarray]:
  """Prompts as sampled: image mode, or next_segment='image', appends <boi> unless an image is already open."""
  out = []
  for p in prompts:
    p = np.asarray(p, np.int32).reshape(-1)
    if not p.size:
      raise ValueError("an empty prompt: a prompt starts with <bos> at least")
    constraints.initial_image_left(p, grammar)  # refuses an over-long open image
    opens_image = options.mode == "image" or options.next_segment == "image"
    if opens_image and constraints.open_image_codes(p, grammar.vocab) is None:
      p = np.append(p, np.int32(grammar.vocab.boi_id))
    out.append(p)
  return out


def guidance_streams(prompts: list[np.ndarray], vocab: vocab_lib.Vocab, image_stream: bool) -> list[list]:
  """[conditional, (image-conditioned,) unconditional] prompts, as Chameleon's image sampler builds them: the
  image-conditioned keeps <bos> and the prompt's images only, the unconditional is the null condition <bos>
  (data.cfg_dropout trains it); both keep the open image the conditional prompt ends in."""
  def tail(p):
    codes = constraints.open_image_codes(p, vocab)
    return p[len(p) - codes - 1:] if codes is not None else p[:0]

  uncond = [np.concatenate([[vocab_lib.BOS_ID], tail(p)]).astype(np.int32) for p in prompts]
  streams = [prompts]
  if image_stream:
    keep = lambda p: (p == vocab_lib.BOS_ID) | (p == vocab.boi_id) | (p == vocab.eoi_id) | vocab.is_image(p)  # noqa
    streams.append([p[keep(p)] for p in prompts])
  return streams + [uncond]


def pad_rows(rows: list[np.ndarray], side: str) -> dict:
  """Rows of different lengths -> [n, longest] tokens, positions, segment_ids (1 real, 0 padding) and `last`, each
  row's last real slot."""
  longest = max(len(r) for r in rows)
  out = {k: np.zeros((len(rows), longest), np.int32) for k in ("tokens", "positions", "segment_ids")}
  last = np.zeros(len(rows), np.int32)
  for i, r in enumerate(rows):
    at = longest - len(r) if side == "left" else 0
    out["tokens"][i, at:at + len(r)], out["positions"][i, at:at + len(r)] = r, np.arange(len(r))
    out["segment_ids"][i, at:at + len(r)], last[i] = 1, at + len(r) - 1
  return {**out, "last": last}


def next_tokens(stream_logits, image_left, seen, no_boi, key, grammar: constraints.Grammar, options: Options):
  """One id per row from `stream_logits` [streams, b, vocab] (float32): guidance and CD-K at image tokens, the
  repetition penalty on seen text ids, the grammar's mask, then temperature / top-k / top-p (or argmax)."""
  ok = constraints.allowed(grammar, image_left, no_boi)
  cond = jnp.where(ok, stream_logits[0], logits_lib.NEG_INF)
  in_image = (image_left >= 0)[:, None]
  scores = stream_logits[0]
  if stream_logits.shape[0] > 1:
    guided = logits_lib.guide(stream_logits, options.cfg, options.cfg_image)
    scores = jnp.where(in_image, guided, scores)
  if options.cd_k:
    scores = jnp.where(in_image & ~logits_lib.cd_k_head(cond, options.cd_k, options.cd_alpha), logits_lib.NEG_INF,
                       scores)
  if options.repetition_penalty != 1.0:
    text = jnp.arange(scores.shape[-1]) < grammar.vocab.text_size
    scores = logits_lib.penalize_repetition(scores, seen & text, options.repetition_penalty)
  scores = jnp.where(ok, scores, logits_lib.NEG_INF)
  return logits_lib.choose(scores, key, options.temperature, options.top_k, options.top_p)


@flax.struct.dataclass
class _Loop:
  cache: kv_cache.KVCache
  logits: jax.Array  # [rows, vocab] float32: every stream row's next-token logits
  positions: jax.Array  # [rows] the next token's position in each row's document
  image_left: jax.Array  # [b]
  seen: jax.Array  # [b, vocab] bool: ids in the row so far (repetition penalty)
  done: jax.Array  # [b] bool
  out: jax.Array  # [b, max_new_tokens]
  step: jax.Array


class Sampler:
  """Jitted prefill and decode for one model on one mesh (None: the default device)."""

  def __init__(self, model_config, vocab: vocab_lib.Vocab, codes_per_image: int, mesh=None, rules=()):
    self.model, self.vocab, self.codes_per_image = Transformer(model_config), vocab, codes_per_image
    self.mesh, self.rules = mesh, rules
    self.batch_shards = 1 if mesh is None else math.prod(mesh.shape[a] for a in mesh_lib.BATCH_AXES)

  def grammar(self, mode: str) -> constraints.Grammar:
    return constraints.Grammar(self.vocab, self.codes_per_image, self.model.config.vocab_size, mode)

  def generate(self, params, prompts, options: Options, seed: int = 0) -> Samples:
    """Sample a continuation of each prompt (a 1-D array of our ids, starting with <bos>). One seed, one output."""
    options.check()
    grammar = self.grammar(options.mode)
    prompts = conditional_prompts(prompts, options, grammar)
    b = len(prompts)
    rows = prompts + prompts[:1] * (-b % self.batch_shards)  # whole rows per data-parallel shard
    streams = [rows]
    if options.cfg is not None:
      with_images = any(self.vocab.is_image(p).any() for p in prompts)
      streams = guidance_streams(rows, self.vocab, image_stream=with_images)
    padded = pad_rows([r for stream in streams for r in stream], options.padding)
    lengths = np.array([len(r) for stream in streams for r in stream], np.int32)
    image_left = np.array([constraints.initial_image_left(r, grammar) for r in rows], np.int32)
    if options.mode == "image":  # exactly the open image's remaining codes and its <eoi>
      options = dataclasses.replace(options, max_new_tokens=int(image_left.max()) + 1)
    seen = np.zeros((len(rows), self.model.config.vocab_size), bool)
    for i, r in enumerate(rows):
      seen[i, r] = True
    max_len = padded["tokens"].shape[1] + options.max_new_tokens
    with self._context():
      logits, cache = self._prefill(max_len)(params, padded["tokens"], padded["positions"], padded["segment_ids"],
                                             padded["last"])
      out, done_at = self._decode(options, len(streams))(params, cache, logits, lengths, image_left, seen,
                                                         jax.random.key(seed))
    if jax.process_count() > 1:  # rows live on every process's devices
      out, done_at = multihost_utils.process_allgather((out, done_at), tiled=True)
    out, done_at = np.asarray(out)[:b], np.asarray(done_at)[:b]
    return Samples(tokens=out, lengths=done_at, prompts=prompts)

  def _context(self):
    if self.mesh is None:
      return nn.logical_axis_rules(self.rules)
    return mesh_lib.mesh_context(self.mesh, self.rules)

  @functools.lru_cache(maxsize=8)
  def _prefill(self, max_len: int):
    def prefill(params, tokens, positions, segment_ids, last):
      cache = kv_cache.constrain(kv_cache.init(self.model.config, tokens.shape[0], max_len))
      logits, cache = self.model.apply({"params": params}, tokens, positions, segment_ids,
                                       self.vocab.modality(tokens), cache=cache, logits_at=last)
      return logits[:, 0], kv_cache.constrain(cache)
    return jax.jit(prefill)

  @functools.lru_cache(maxsize=8)
  def _decode(self, options: Options, num_streams: int):
    grammar = self.grammar(options.mode)
    pad, n = vocab_lib.PAD_ID, options.max_new_tokens

    def decode(params, cache, logits, positions, image_left, seen, key):
      b = image_left.shape[0]

      def step(s: _Loop) -> _Loop:
        no_boi = jnp.full((b,), options.next_segment == "text") & (s.step == 0)
        token = next_tokens(s.logits.reshape(num_streams, b, -1), s.image_left, s.seen, no_boi,
                            jax.random.fold_in(key, s.step), grammar, options)
        token = jnp.where(s.done, pad, token)
        fed = jnp.tile(token, num_streams)[:, None]  # every stream continues with the chosen tokens
        logits, cache = self.model.apply({"params": params}, fed, s.positions[:, None], jnp.ones_like(fed),
                                         self.vocab.modality(fed), cache=s.cache)
        return s.replace(
            cache=kv_cache.constrain(cache), logits=logits[:, 0], positions=s.positions + 1,
            image_left=jnp.where(s.done, s.image_left, constraints.advance(grammar, s.image_left, token)),
            seen=s.seen.at[jnp.arange(b), token].set(True), done=s.done | constraints.stops(grammar, token),
            out=s.out.at[:, s.step].set(token), step=s.step + 1)

      state = _Loop(cache=cache, logits=logits, positions=positions, image_left=image_left, seen=seen,
                    done=jnp.zeros((b,), bool), out=jnp.full((b, n), pad, jnp.int32), step=jnp.zeros((), jnp.int32))
      state = jax.lax.while_loop(lambda s: (s.step < n) & ~jnp.all(s.done), step, state)
      return state.out, jnp.sum(state.out != pad, axis=1)  # the grammar never emits <pad>
    return jax.jit(decode)
