"""unimodal-tokenize: bad images converted or skipped by name, codes equal a direct encode, resume after SIGKILL."""
import logging
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from unimodal_jax.vq import images as images_lib
from unimodal_jax.vq import tokenize, vqgan
from unimodal_jax.vq import weights as vq_weights

RESOLUTION = 16


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


def _reference_codes(tokenizer_dir, pixels):
  params, config = vq_weights.load_tokenizer(tokenizer_dir)
  encode = jax.jit(lambda p, x: vqgan.VQGAN(config).apply({"params": p}, vqgan.from_pixels(x),
                                                        method=vqgan.VQGAN.encode)[1])
  return np.asarray(encode(params, pixels))


def test_bad_images_are_converted_or_skipped_with_their_names_logged(tmp_path, tokenizer_dir, caplog):
  rng = np.random.default_rng(0)
  src = tmp_path / "images"
  src.mkdir()
  rgb = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(src / "a_rgb.png")
  Image.fromarray(rgb[..., 0]).save(src / "b_gray.png")
  Image.fromarray(np.dstack([rgb, np.full((24, 30), 128, np.uint8)])).save(src / "c_alpha.png")
  Image.fromarray(rgb).convert("CMYK").save(src / "d_cmyk.jpg")
  Image.fromarray(rgb[:8, :8]).save(src / "e_tiny.png")
  Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(src / "f_huge.png")
  (src / "g_notes.txt").write_text("not an image")
  data = (src / "a_rgb.png").read_bytes()
  (src / "h_truncated.png").write_bytes(data[:len(data) // 2])
  with caplog.at_level(logging.INFO):
    totals = tokenize.tokenize(images_lib.FolderSource(str(src)), tokenizer_dir, str(tmp_path / "codes"),
                               shard_size=3, batch_size=8, min_size=12, max_pixels=100 * 100, progress=False)
  assert totals["inputs"] == 8 and totals["written"] == 4
  assert totals["skipped"] == {"tiny": 1, "huge": 1, "not_an_image": 1, "corrupt": 1}
  assert totals["converted"] == {"L": 1, "RGBA": 1, "CMYK": 1}
  for name in ("e_tiny.png", "f_huge.png", "g_notes.txt", "h_truncated.png"):
    assert any(name in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records), name
  records = tokenize.read_shards(str(tmp_path / "codes"))
  assert [os.path.basename(r["source"]) for r in records] == ["a_rgb.png", "b_gray.png", "c_alpha.png", "d_cmyk.jpg"]
  assert [r["index"] for r in records] == [0, 1, 2, 3]
  # alpha 128 over white, grayscale replicated: what the encoder saw equals these references
  prepared = np.stack([images_lib.prepare((src / n).read_bytes(), RESOLUTION, min_size=12, max_pixels=10 ** 4)[0]
                       for n in ("a_rgb.png", "b_gray.png", "c_alpha.png", "d_cmyk.jpg")])
  assert np.all(prepared[1, ..., 0] == prepared[1, ..., 2])
  np.testing.assert_array_equal(np.stack([r["codes"] for r in records]), _reference_codes(tokenizer_dir, prepared))


def test_killed_run_resumes_without_duplicating_or_losing_images(tmp_path, tokenizer_dir):
  rng = np.random.default_rng(1)
  src, out = tmp_path / "images", tmp_path / "codes"
  src.mkdir()
  count = 400
  for i in range(count):
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(src / f"{i:04d}.jpg", quality=90)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(
      [sys.executable, "-m", "unimodal_jax.cli.tokenize", f"--images={src}", f"--tokenizer={tokenizer_dir}",
       f"--out_dir={out}", "--shard_size=2", "--batch_size=2"], env=env, stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  finished = lambda: sorted(p for p in os.listdir(out) if p.endswith(".array_record")) if out.exists() else []
  deadline = time.time() + 300
  while len(finished()) < 3 and proc.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  before = {p: (out / p).read_bytes() for p in finished()}
  num_shards = count // 2
  assert 3 <= len(before) < num_shards  # killed mid-way

  totals = tokenize.tokenize(images_lib.FolderSource(str(src)), tokenizer_dir, str(out), shard_size=2, batch_size=8,
                             progress=False)
  assert totals["shards_skipped"] == len(before) and totals["written"] == count
  assert len(finished()) == num_shards and not [p for p in os.listdir(out) if p.endswith(".tmp")]
  for p, data in before.items():
    assert (out / p).read_bytes() == data  # finished shards are not rewritten
  records = tokenize.read_shards(str(out))
  assert [r["index"] for r in records] == list(range(count))
  sample = [0, count // 2, count - 1]
  pixels = np.stack([images_lib.prepare((src / f"{i:04d}.jpg").read_bytes(), RESOLUTION)[0]
                     for i in sample])
  np.testing.assert_array_equal(np.stack([records[i]["codes"] for i in sample]),
                                _reference_codes(tokenizer_dir, pixels))


def test_array_record_of_encoded_images_tokenizes_like_the_folder(tmp_path, tokenizer_dir):
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
  for name, source in (("folder", images_lib.FolderSource(str(src))),
                       ("array_record", images_lib.ArrayRecordSource(str(tmp_path / "*.array_record")))):
    tokenize.tokenize(source, tokenizer_dir, str(tmp_path / name), shard_size=4, batch_size=8, progress=False)
  folder, records = (tokenize.read_shards(str(tmp_path / n)) for n in ("folder", "array_record"))
  assert [r["index"] for r in records] == list(range(5))
  np.testing.assert_array_equal(np.stack([r["codes"] for r in records]), np.stack([r["codes"] for r in folder]))


def test_tfds_dataset_of_uint8_images(tmp_path, tokenizer_dir):
  tfds = pytest.importorskip("tensorflow_datasets", reason="the tfds extra is not installed")
  rng = np.random.default_rng(3)
  arrays = [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(4)]

  class VqImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Tensor(shape=(20, 24, 3), dtype=np.uint8)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, a in enumerate(arrays):
        yield i, {"image": a}

  builder = VqImages(data_dir=str(tmp_path / "tfds"), file_format="array_record")
  builder.download_and_prepare()
  source = images_lib.TfdsSource(builder.data_dir, "train", None, "image")
  totals = tokenize.tokenize(source, tokenizer_dir, str(tmp_path / "codes"), shard_size=3, batch_size=8,
                             progress=False)
  assert totals["written"] == 4
  records = sorted(tokenize.read_shards(str(tmp_path / "codes")), key=lambda r: r["index"])
  pixels = np.stack([images_lib.prepare(source.load(r["index"]), RESOLUTION)[0] for r in records])
  np.testing.assert_array_equal(np.stack([r["codes"] for r in records]), _reference_codes(tokenizer_dir, pixels))
