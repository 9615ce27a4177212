"""VQGAN training on any image input (a folder here), and taming's adaptive discriminator weight checked against
separately computed gradients."""
import copy
import functools

import jax
import numpy as np
import pytest
from PIL import Image

from unimodal_jax.config import ConfigError, load_config_file
from unimodal_jax.data import inputs, photos
from unimodal_jax.train import vq_loop
from unimodal_jax.train.metrics import read_metrics
from unimodal_jax.vq import images as images_lib
from unimodal_jax.vq import vqgan
from unimodal_jax.vq import weights as vq_weights


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("vq_images")
  rng = np.random.default_rng(0)
  for i in range(6):
    image = np.zeros((40 + 8 * i, 56, 3), np.uint8)
    image[..., i % 3] = rng.integers(100, 256)
    image[::4] = 255  # stripes: something to reconstruct
    Image.fromarray(image).save(root / f"{i}.png")
  (root / "notes.dat").write_text("not an image")
  return root


def test_source_crops_are_deterministic_and_skip_what_is_not_an_image(folder):
  source = inputs.FolderSource(str(folder))
  crops = photos.SourceCrops(source, 32, seed=3, num_eval=4)
  a, b = crops.batch(5, 8, process_index=1), photos.SourceCrops(source, 32, seed=3).batch(5, 8, process_index=1)
  np.testing.assert_array_equal(a, b)
  assert a.shape == (8, 32, 32, 3) and a.dtype == np.uint8
  assert not np.array_equal(a, crops.batch(6, 8, process_index=1))
  want = np.stack([images_lib.prepare((folder / f"{i}.png").read_bytes(), 32)[0] for i in range(4)])
  np.testing.assert_array_equal(crops.eval_images(), want)  # sorted order; notes.dat is last and skipped


def test_train_vq_on_a_folder_exports_a_tokenizer(folder, tmp_path):
  config = load_config_file("configs/vq_tiny.py")
  config.vq_train.source, config.vq_train.source_path = "images", str(folder)
  config.vq_train.num_steps, config.vq_train.log_every, config.vq_train.checkpoint_every = 4, 2, 4
  config.vq_train.num_eval_images = 4
  final = vq_loop.train(config, str(tmp_path))
  assert np.isfinite(final["eval/psnr"])
  assert [r["step"] for r in read_metrics(str(tmp_path / "metrics.jsonl")) if "loss" in r] == [2, 4]
  params, _ = vq_weights.load_tokenizer(str(tmp_path / vq_loop.TOKENIZER_DIR))
  assert params["codebook"].shape == (32, 8)
  config.vq_train.source_path = ""
  with pytest.raises(ConfigError, match="vq_train.source='images' needs config.vq_train.source_path"):
    vq_loop.validate(config)


def test_adaptive_discriminator_weight_matches_taming_from_separate_gradients():
  config = load_config_file("configs/vq_tiny.py")
  config.vq_train.adaptive_disc_weight, config.vq_train.disc_weight = True, 0.8
  state = jax.jit(functools.partial(vq_loop.init_state, config))(jax.random.key(0))  # as vq_loop.train does
  pixels = photos.PhotoCrops(32, seed=0).batch(0, 4)
  images = vqgan.from_pixels(pixels)
  parts = vq_loop.make_loss_parts(config)
  # the reference: each loss differentiated on its own, taming's formula applied to their last-layer gradients
  g_nll = jax.jit(jax.grad(lambda p: parts(p, state["disc_params"], images, True)[0][0]))(state["params"])
  g_gan = jax.jit(jax.grad(lambda p: parts(p, state["disc_params"], images, True)[0][1]))(state["params"])
  last = lambda g: np.asarray(g["decoder"]["conv_out"]["kernel"])  # noqa: E731
  lam = np.linalg.norm(last(g_nll)) / (np.linalg.norm(last(g_gan)) + 1e-4)
  assert 0 < lam < 1e4
  (nll, adversarial), _ = jax.jit(parts, static_argnums=3)(state["params"], state["disc_params"], images, True)
  new, metrics, _ = vq_loop.make_train_step(config)(copy.deepcopy(jax.device_get(state)), pixels, True)
  # float32 gradients of a random GAN, compiled in one step vs. eagerly apart, agree to ~1e-3 relative
  np.testing.assert_allclose(float(metrics["disc_weight"]), 0.8 * lam, rtol=5e-3)
  np.testing.assert_allclose(float(metrics["loss"]), float(nll + 0.8 * lam * adversarial), rtol=5e-3)
  assert not np.allclose(float(metrics["loss"]), float(nll + 0.8 * adversarial), rtol=5e-3)  # λ made a difference
