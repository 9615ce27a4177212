"""The embedded dataset coded by the VQGAN that ships in the package (configs/demo.py's image tokenizer)."""
import os
import shutil

import grain
import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from unimodal_jax import config as config_lib
from unimodal_jax.data import documents, embedded
from unimodal_jax.vq import codes, vqgan
from unimodal_jax.vq import weights as vq_weights
from unimodal_jax.train import validate as validate_lib


def vqgan_config(tokenizer_path=codes.PHOTOS_TOKENIZER):
  c = config_lib.default_config()
  c.vocab.text_size = 512
  c.vq.kind, c.vq.tokenizer_path = "vqgan", tokenizer_path
  c.vq.image_size, c.vq.patch_size, c.vq.num_codes = 64, 8, 256
  c.model.vocab_size = 512 + 2 + 256
  return c


@pytest.fixture(scope="module")
def photos():
  return embedded.load_images(64)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, photos):
  data_dir = str(tmp_path_factory.mktemp("embedded_vqgan"))
  paths = embedded.prepare(vqgan_config(), data_dir)
  return data_dir, [documents.decode_document(r) for p in paths for r in grain.sources.ArrayRecordDataSource([p])]


@pytest.fixture(scope="module")
def direct_encode():
  """The reference: the saved VQGAN's encoder on all given images in one jitted call (no batching or padding)."""
  params, model = vq_weights.load_tokenizer(codes.PHOTOS_TOKENIZER)
  encode = jax.jit(lambda p, x: vqgan.VQGAN(model).apply({"params": p}, vqgan.from_pixels(x),
                                                         method=vqgan.VQGAN.encode)[1])
  return lambda images: np.asarray(encode(params, images))


def test_image_codes_equal_a_direct_encode_of_the_photos(prepared, photos, direct_encode):
  _, docs = prepared
  images, captions = photos
  want = {(c, w.tobytes()) for c, w in zip(captions, direct_encode(images))}
  text_tok, _ = embedded.load_tokenizers(prepared[0])
  pairs = [d.segments for d in docs if d.kind == "image_text_pair"]
  got = {(text_tok.decode(t), np.asarray(g, np.int32).tobytes()) for t, g in pairs}
  assert len(pairs) == len(images) and got == want
  interleaved = [s for d in docs if d.kind == "interleaved" for s in d.segments if s.ndim == 2]
  assert interleaved and {s.astype(np.int32).tobytes() for s in interleaved} <= {g for _, g in want}
  assert len({g for _, g in got}) > len(images) // 2  # distinct photos get distinct code grids


def test_load_tokenizers_gives_the_vqgan_that_reconstructs_the_photos(prepared, photos):
  data_dir, _ = prepared
  assert not os.path.exists(os.path.join(data_dir, embedded.CODEBOOK_FILE))
  _, image_tok = embedded.load_tokenizers(data_dir)
  assert isinstance(image_tok, codes.VQGANTokenizer) and image_tok.grid_size == 8
  images = photos[0][::4][:8]  # centre squares of 8 different photos
  pixels = image_tok.decode(image_tok.encode(images))
  assert pixels.shape == images.shape and pixels.dtype == np.uint8
  mse = np.mean((pixels.astype(np.float64) - images) ** 2)
  assert 10 * np.log10(255 ** 2 / mse) > 16  # docs/benchmarks.md: 21.3 dB over the 28 centre squares


def test_a_changed_tokenizer_invalidates_the_build(tmp_path, photos, monkeypatch):
  monkeypatch.setattr(embedded, "load_images", lambda image_size: photos)  # the same photos, loaded once
  path, data_dir = str(tmp_path / "tokenizer"), str(tmp_path / "data")
  shutil.copytree(codes.PHOTOS_TOKENIZER, path)
  os.makedirs(data_dir)
  open(os.path.join(data_dir, embedded.CODEBOOK_FILE), "w").close()  # left by an earlier k-means build
  c = vqgan_config(path)
  paths = embedded.prepare(c, data_dir)
  manifest = embedded._read_manifest(data_dir)
  assert manifest["image_tokenizer"]["sha256"] == codes.fingerprint(codes.PHOTOS_TOKENIZER)  # a copy matches
  assert not os.path.exists(os.path.join(data_dir, embedded.CODEBOOK_FILE))
  c.vq.kind = "kmeans"
  assert embedded._build_key(c) != manifest["key"]
  c.vq.kind = "vqgan"
  weights = os.path.join(path, codes.VQGAN_FILES[1])
  tensors = load_file(weights)
  tensors["quantize.embedding.weight"] = tensors["quantize.embedding.weight"][::-1].copy()
  save_file(tensors, weights)
  assert embedded._build_key(c) != manifest["key"] and not embedded._ready(data_dir, embedded._build_key(c), "vqgan")
  with pytest.raises(ValueError, match="changed since the build"):  # its codes are no longer this tokenizer's
    embedded.load_tokenizers(data_dir)
  assert all(os.path.exists(p) for p in paths)


def test_a_vqgan_whose_dims_differ_from_config_vq_is_named_with_its_file():
  c = vqgan_config()
  c.vq.patch_size = 4
  with pytest.raises(config_lib.ConfigError, match=r"config.vq.tokenizer_path=.*photos_tokenizer/config.json is a "
                     r"VQGAN for \(image_size, patch_size, num_codes\) = \(64, 8, 256\)"):
    validate_lib.validate(c, num_devices=1)
  c = vqgan_config("")
  with pytest.raises(config_lib.ConfigError, match="config.vq.tokenizer_path: data.source='embedded'"):
    validate_lib.validate(c, num_devices=1)
  validate_lib.validate(vqgan_config(), num_devices=1)
