"""unimodal-tokenize: images with captions become document shards whose codes equal a direct encode; bad inputs are
converted, skipped by name (--on_bad_record=skip) or stop the run leaving nothing to train on; a killed run resumes
to the bytes of an uninterrupted one; an --out_dir of another run is refused."""
import logging
import os
import signal
import subprocess
import sys
import time

import grain
import jax
import numpy as np
import pytest
from PIL import Image

from unimodal_jax.data import documents, sources as data_sources
from unimodal_jax.data import tokenizer as tokenizer_lib
from unimodal_jax.ingest import build, encoders, shards, sources
from unimodal_jax.vq import images as images_lib
from unimodal_jax.vq import vqgan
from unimodal_jax.vq import weights as vq_weights

RESOLUTION = 16
CAPTIONS = ["A red square.", "A noisy picture.", "Nothing to see here.", "A cat, perhaps."]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  """A random tiny VQGAN (16px -> 4x4 codes from 32), saved as unimodal-train-vq saves one."""
  config = vqgan.model_config(resolution=RESOLUTION, base_channels=8, channel_multiplier=(1, 2, 2), num_res_blocks=1,
                              latent_channels=8, embed_dim=4, num_embeddings=32, norm_groups=4)
  shapes = jax.eval_shape(lambda: vqgan.init_params(config, jax.random.key(0)))  # random weights, no init compile
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(np.float32), shapes)
  out = str(tmp_path_factory.mktemp("tokenizer"))
  vq_weights.save_tokenizer(params, config, out)
  return out


@pytest.fixture(scope="module")
def text_tokenizer(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("text") / "tokenizer.json")
  tokenizer_lib.TextTokenizer.train(CAPTIONS * 10, 300).save(path)
  return path


def reference_codes(tokenizer_dir, pixels):
  params, config = vq_weights.load_tokenizer(tokenizer_dir)
  encode = jax.jit(lambda p, x: vqgan.VQGAN(config).apply({"params": p}, vqgan.from_pixels(x),
                                                        method=vqgan.VQGAN.encode)[1])
  return np.asarray(encode(params, pixels))


def read_documents(out_dir) -> list[documents.Document]:
  paths = data_sources.shard_paths(str(out_dir), "data.dir")
  return [documents.decode_document(r) for r in grain.sources.ArrayRecordDataSource(paths)]


def tokenize(source, out_dir, tokenizer_dir, text_tokenizer, **kwargs):
  limits = {k: kwargs.pop(k) for k in ("min_size", "max_pixels") if k in kwargs}
  tok, plan = encoders.from_vqgan(text_tokenizer, tokenizer_dir, batch_size=8, max_document_tokens=1000, **limits)
  return build.write_documents(source, str(out_dir), tok, plan=plan, progress=False, **kwargs)


def test_bad_images_are_converted_or_skipped_with_their_names_logged(tmp_path, tokenizer_dir, text_tokenizer, caplog):
  rng = np.random.default_rng(0)
  src = tmp_path / "images"
  src.mkdir()
  rgb = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(src / "a_rgb.png")
  (src / "a_rgb.txt").write_text(CAPTIONS[0])
  Image.fromarray(rgb[..., 0]).save(src / "b_gray.png")
  Image.fromarray(np.dstack([rgb, np.full((24, 30), 128, np.uint8)])).save(src / "c_alpha.png")
  Image.fromarray(rgb).convert("CMYK").save(src / "d_cmyk.jpg")
  Image.fromarray(rgb[:8, :8]).save(src / "e_tiny.png")
  Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(src / "f_huge.png")
  (src / "g_notes.dat").write_text("not an image")
  data = (src / "a_rgb.png").read_bytes()
  (src / "h_truncated.png").write_bytes(data[:len(data) // 2])
  with caplog.at_level(logging.INFO):
    totals = tokenize(sources.FolderSource(str(src)), tmp_path / "docs", tokenizer_dir, text_tokenizer, shard_size=3,
                      min_size=12, max_pixels=100 * 100, on_bad_record="skip")
  assert totals["inputs"] == 8 and totals["documents"] == 4 and totals["shards"] == 3
  assert totals["skipped"] == {"tiny": 1, "huge": 1, "not_an_image": 1, "corrupt": 1}
  assert totals["converted"] == {"L": 1, "RGBA": 1, "CMYK": 1}
  for name in ("e_tiny.png", "f_huge.png", "g_notes.dat", "h_truncated.png"):
    assert any(name in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records), name
  docs = read_documents(tmp_path / "docs")
  assert [d.kind for d in docs] == ["image_text_pair", "interleaved", "interleaved", "interleaved"]
  assert tokenizer_lib.TextTokenizer.load(text_tokenizer).decode(docs[0].segments[0]) == CAPTIONS[0]
  # alpha 128 over white, grayscale replicated: what the encoder saw equals these references
  prepared = np.stack([images_lib.prepare((src / n).read_bytes(), RESOLUTION)[0]
                       for n in ("a_rgb.png", "b_gray.png", "c_alpha.png", "d_cmyk.jpg")])
  assert np.all(prepared[1, ..., 0] == prepared[1, ..., 2])
  np.testing.assert_array_equal(np.stack([d.segments[-1] for d in docs]), reference_codes(tokenizer_dir, prepared))


def test_a_bad_image_stops_the_run_naming_it_and_leaves_nothing_to_train_on(tmp_path, tokenizer_dir, text_tokenizer):
  src, out = tmp_path / "images", tmp_path / "docs"
  src.mkdir()
  for i in range(4):
    Image.fromarray(np.full((20, 20, 3), 60 * i, np.uint8)).save(src / f"{i}.png")
  (src / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
  with pytest.raises(shards.BadRecordError, match=r"3.png: .*--on_bad_record=skip"):
    tokenize(sources.FolderSource(str(src)), out, tokenizer_dir, text_tokenizer, shard_size=2)
  assert sorted(p.name for p in out.glob("*.array_record")) == ["train-00000-of-00002.array_record"]
  with pytest.raises(ValueError, match="has not finished"):  # training refuses the half-done directory
    data_sources.shard_paths(str(out), "data.dir")
  totals = tokenize(sources.FolderSource(str(src)), out, tokenizer_dir, text_tokenizer, shard_size=2,
                    on_bad_record="skip")  # the rerun resumes: the finished shard stays, the rest is written
  assert totals["documents"] == 3 and totals["skipped"] == {"not_an_image": 1}
  assert len(read_documents(out)) == 3


def test_an_out_dir_of_another_run_is_refused(tmp_path, tokenizer_dir, text_tokenizer):
  src = tmp_path / "images"
  src.mkdir()
  for i in range(3):
    Image.fromarray(np.full((20, 20, 3), 80 * i, np.uint8)).save(src / f"{i}.png")
  out = tmp_path / "docs"
  tokenize(sources.FolderSource(str(src)), out, tokenizer_dir, text_tokenizer, shard_size=2)
  with pytest.raises(ValueError, match=r"holds shards of another ingest run .*differs in \['num_shards', "
                                       r"'shard_size'\]"):
    tokenize(sources.FolderSource(str(src)), out, tokenizer_dir, text_tokenizer, shard_size=1)
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "train-00000-of-00001.array_record").write_bytes(b"")
  with pytest.raises(ValueError, match="already has shards .* but no ingest_plan.json"):
    tokenize(sources.FolderSource(str(src)), foreign, tokenizer_dir, text_tokenizer)


def run_cli(src, out, tokenizer_dir, text_tokenizer, *extra):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  return subprocess.Popen(
      [sys.executable, "-m", "unimodal_jax.cli.tokenize", f"--images={src}", f"--tokenizer={tokenizer_dir}",
       f"--text_tokenizer={text_tokenizer}", f"--out_dir={out}", "--shard_size=2", "--batch_size=2", *extra],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_run_resumes_to_the_bytes_of_an_uninterrupted_run(tmp_path, tokenizer_dir, text_tokenizer):
  rng = np.random.default_rng(1)
  src, out, whole = tmp_path / "images", tmp_path / "killed", tmp_path / "whole"
  src.mkdir()
  count = 300
  for i in range(count):
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(src / f"{i:04d}.jpg", quality=90)
    if i % 2:
      (src / f"{i:04d}.txt").write_text(CAPTIONS[i % len(CAPTIONS)])
  proc = run_cli(src, out, tokenizer_dir, text_tokenizer)
  finished = lambda: sorted(p.name for p in out.glob("*.array_record")) if out.exists() else []  # noqa: E731
  deadline = time.time() + 300
  while len(finished()) < 3 and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  before = {p: (out / p).read_bytes() for p in finished()}
  num_shards = count // 2
  assert 3 <= len(before) < num_shards  # killed mid-way

  resumed = run_cli(src, out, tokenizer_dir, text_tokenizer)
  assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-2000:]
  for p, data in before.items():
    assert (out / p).read_bytes() == data  # finished shards are not rewritten
  uninterrupted = run_cli(src, whole, tokenizer_dir, text_tokenizer)
  assert uninterrupted.wait(timeout=600) == 0, uninterrupted.stderr.read()[-2000:]
  assert "skipped none" in uninterrupted.stderr.read()  # the summary line
  names = sorted(p.name for p in whole.iterdir())
  assert names == sorted(p.name for p in out.iterdir())  # no temporary file left behind
  assert len([n for n in names if n.endswith(".array_record")]) == num_shards
  for name in names:
    assert (out / name).read_bytes() == (whole / name).read_bytes(), name

  docs = read_documents(out)
  assert len(docs) == count and [d.kind for d in docs[:2]] == ["interleaved", "image_text_pair"]
  sample = [0, count // 2 + 1, count - 1]
  pixels = np.stack([images_lib.prepare((src / f"{i:04d}.jpg").read_bytes(), RESOLUTION)[0] for i in sample])
  np.testing.assert_array_equal(np.stack([docs[i].segments[-1] for i in sample]),
                                reference_codes(tokenizer_dir, pixels))


def test_array_record_of_encoded_images_tokenizes_like_the_folder(tmp_path, tokenizer_dir, text_tokenizer):
  from array_record.python import array_record_module
  rng = np.random.default_rng(2)
  src = tmp_path / "images"
  src.mkdir()
  for i in range(5):
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(src / f"{i}.png")
  writer = array_record_module.ArrayRecordWriter(str(tmp_path / "images.array_record"), "group_size:1")
  for i in range(5):
    writer.write((src / f"{i}.png").read_bytes())
  writer.close()
  for name, source in (("folder", sources.FolderSource(str(src))),
                       ("array_record", sources.ArrayRecordSource(str(tmp_path / "*.array_record")))):
    tokenize(source, tmp_path / name, tokenizer_dir, text_tokenizer, shard_size=4)
  folder, records = (read_documents(tmp_path / n) for n in ("folder", "array_record"))
  assert len(records) == 5
  np.testing.assert_array_equal(np.stack([d.segments[0] for d in records]), np.stack([d.segments[0] for d in folder]))


def test_tfds_dataset_of_uint8_images_with_captions(tmp_path, tokenizer_dir, text_tokenizer):
  tfds = pytest.importorskip("tensorflow_datasets", reason="the tfds extra is not installed")
  rng = np.random.default_rng(3)
  arrays = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(4)]

  class VqImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Tensor(shape=(20, 24, 3), dtype=np.uint8), "caption": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, a in enumerate(arrays):
        yield i, {"image": a, "caption": CAPTIONS[i]}

  builder = VqImages(data_dir=str(tmp_path / "tfds"), file_format="array_record")
  builder.download_and_prepare()
  source = sources.TfdsSource(builder.data_dir, "train", None, "image", "caption")
  totals = tokenize(source, tmp_path / "docs", tokenizer_dir, text_tokenizer, shard_size=3)
  assert totals["documents"] == 4
  docs = read_documents(tmp_path / "docs")
  text_tok = tokenizer_lib.TextTokenizer.load(text_tokenizer)
  examples = [source.source[i] for i in range(4)]
  assert [text_tok.decode(d.segments[0]) for d in docs] == [e["caption"].decode() for e in examples]
  pixels = np.stack([images_lib.prepare(e["image"], RESOLUTION)[0] for e in examples])
  np.testing.assert_array_equal(np.stack([d.segments[1] for d in docs]), reference_codes(tokenizer_dir, pixels))
