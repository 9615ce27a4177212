"""Samples during training: every `config.sample.every` steps, the configured prompts' samples as a PNG grid (image
and interleaved modes) and texts, into TensorBoard and <workdir>/samples. unimodal-train builds it; the loop calls it.
"""
import jax
import numpy as np
from etils import epath
from tensorboardX import SummaryWriter

from unimodal_jax.data import embedded, vocab as vocab_lib
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.sample import checks, decode, images as images_lib, text as text_lib
from unimodal_jax.vq import codes as codes_lib

SAMPLES_DIR = "samples"
SAMPLES_EVENTS_SUFFIX = ".samples"  # the TensorBoard event file of the samples: events.out.tfevents.<time>.<host><this>


def options(sample_config, mode: str | None = None) -> decode.Options:
  """decode.Options from a `config.sample` section (cfg 0 = no guidance streams)."""
  s = sample_config
  return decode.Options(mode=mode or s.mode, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                        top_k=s.top_k, top_p=s.top_p, cfg=s.cfg or None)


def grid_size(config) -> tuple[int, int]:
  g = config.vq.image_size // config.vq.patch_size
  return g, g


def text_tokenizer_path(config, workdir: str) -> str:
  """config.sample.text_tokenizer, else the tokenizer.json of the run's data folder."""
  data_dir = config.data.dir or str(epath.Path(workdir) / "data")
  return config.sample.text_tokenizer or str(epath.Path(data_dir) / embedded.TOKENIZER_FILE)


def image_codec(config, workdir: str):
  """The run's image tokenizer as (encode, decode): the one at vq.tokenizer_path, else the one the embedded data
  folder was prepared with (its k-means codebook or VQGAN); (None, None) when the run has none."""
  if config.vq.tokenizer_path:
    return codes_lib.image_tokenizer(config), codes_lib.image_decoder(config)
  data_dir = config.data.dir or str(epath.Path(workdir) / "data")
  if config.data.source == "embedded" and (epath.Path(data_dir) / embedded.MANIFEST).exists():
    _, tokenizer = embedded.load_tokenizers(data_dir)
    return tokenizer.encode, tokenizer.decode
  return None, None


def sample_rows(samples: decode.Samples, vocab, codec, grid, decoder=None) -> tuple[list[str], np.ndarray | None]:
  """Each sample's text, and the pixels [n, H, W, 3] of every complete image in them (None without a decoder or
  images)."""
  rows = samples.continuations(vocab)
  texts = [text_lib.render(row, vocab, codec) for row in rows]
  found = [codes for row in rows for codes in images_lib.images_in(row, vocab, grid)]
  if decoder is None or not found:
    return texts, None
  return texts, decoder(np.stack(found))


class PeriodicSamples:
  """`hook(step, params)`: samples when `step` is a multiple of sample.every, on the run's mesh; process 0 writes."""

  def __init__(self, config, workdir: str):
    checks.check(config)
    self.config, self.workdir, self.every = config, workdir, config.sample.every
    self._ready = None

  def _setup(self):
    c = self.config
    vocab = vocab_lib.from_config(c)
    path = text_tokenizer_path(c, self.workdir)
    if not epath.Path(path).exists():
      raise FileNotFoundError(f"config.sample.text_tokenizer: no text tokenizer at {path}")
    g = grid_size(c)
    sampler = decode.Sampler(c.model, vocab, g[0] * g[1], mesh_lib.create_mesh(c.mesh), mesh_lib.axis_rules(c))
    decoder = image_codec(c, self.workdir)[1] if c.sample.mode != "text" else None
    # its own file: tensorboardX names event files by the second, and the metrics writer opened in the same
    # second would share (and corrupt) one file
    tb = (SummaryWriter(str(epath.Path(self.workdir) / "tensorboard"), filename_suffix=SAMPLES_EVENTS_SUFFIX)
          if jax.process_index() == 0 else None)
    return vocab, text_lib.TextCodec.for_run(path, vocab), sampler, decoder, tb

  def __call__(self, step: int, params) -> None:
    if not self.every or step % self.every:
      return
    self._ready = self._ready or self._setup()
    vocab, codec, sampler, decoder, tb = self._ready
    s = self.config.sample
    prompts = [text_lib.prompt(p, codec) for p in s.prompts for _ in range(s.num_samples)]
    samples = sampler.generate(params, prompts, options(s), seed=s.seed)
    texts, pixels = sample_rows(samples, vocab, codec, grid_size(self.config), decoder)
    if tb is None:
      return
    out_dir = epath.Path(self.workdir) / SAMPLES_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"[{p}] {t}" for p, t in zip((p for p in s.prompts for _ in range(s.num_samples)), texts)]
    (out_dir / f"step_{step}.txt").write_text("\n".join(lines) + "\n")
    tb.add_text("samples/text", "\n\n".join(lines), step)
    if pixels is not None:
      picture = images_lib.grid(pixels, columns=s.num_samples)
      images_lib.write_png(picture, out_dir / f"step_{step}.png")
      tb.add_image("samples/images", picture, step, dataformats="HWC")
    tb.flush()

  def close(self):
    if self._ready and self._ready[-1] is not None:
      self._ready[-1].close()
