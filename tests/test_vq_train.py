"""VQGAN training on the bundled photos: loss goes down, the codebook is used, GAN and restarts behave."""
import os

import jax
import numpy as np
import pytest

from unimodal_jax.config import load_config_file
from unimodal_jax.train.metrics import read_metrics
from unimodal_jax.data import photos
from unimodal_jax.train import vq_loop
from unimodal_jax.vq import codes, vqgan
from unimodal_jax.vq import weights as vq_weights

STEPS, DISC_START = 60, 50


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """One short run of configs/vq_tiny.py (32px, 32 codes); the PatchGAN loss switches on at DISC_START."""
  workdir = str(tmp_path_factory.mktemp("vq_tiny"))
  config = load_config_file("configs/vq_tiny.py")
  config.vq_train.num_steps, config.vq_train.log_every, config.vq_train.disc_start = STEPS, 20, DISC_START
  config.vq_train.eval_every = 60
  final = vq_loop.train(config, workdir)
  return config, workdir, final, read_metrics(os.path.join(workdir, "metrics.jsonl"))


def test_short_run_lowers_reconstruction_loss_and_uses_most_of_the_codebook(run):
  _, _, final, rows = run
  before = [r for r in rows if "eval/psnr" in r][0]
  assert before["step"] == 0
  assert final["eval/psnr"] > before["eval/psnr"] + 1.5  # +1.5 dB: eval-set MSE down by 30%
  assert final["eval/codebook_usage_pct"] > 50.0
  train_rows = [r for r in rows if "loss/reconstruction" in r]
  assert all(0 < r["codebook/perplexity"] <= 32 and r["codebook/dead_codes"] >= 0 for r in train_rows)


def test_adversarial_loss_switches_on_at_disc_start(run):
  _, _, _, rows = run
  train_rows = [r for r in rows if "loss/reconstruction" in r]
  assert all("loss/adversarial" not in r for r in train_rows if r["step"] <= DISC_START)
  assert "loss/adversarial" in train_rows[-1] and "loss/discriminator" in train_rows[-1]


def test_dead_code_restart_replaces_only_unused_codes_with_encoder_outputs(run):
  config, workdir, _, _ = run
  params, _ = vq_weights.load_tokenizer(os.path.join(workdir, vq_loop.TOKENIZER_DIR))
  counts = np.zeros(config.vqgan.num_embeddings, np.int32)
  counts[::2] = 5  # odd codes are dead
  pixels = photos.PhotoCrops(config.vqgan.resolution, seed=1).batch(0, 4)
  moments = {"mu": jax.tree.map(np.ones_like, params), "count": np.int32(3)}  # optimizer state mirroring params
  state, restarted = vq_loop.make_restart(config)(
      {"params": params, "restart_counts": counts, "opt_state": moments}, pixels, jax.random.key(0))
  mu = np.asarray(state["opt_state"]["mu"]["codebook"])
  assert not mu[1::2].any() and np.all(mu[::2] == 1)  # dead codes' moments zeroed, the others' kept
  assert np.all(np.asarray(state["opt_state"]["mu"]["quant_conv"]["bias"]) == 1)
  assert int(restarted) == config.vqgan.num_embeddings // 2
  new, old = np.asarray(state["params"]["codebook"]), np.asarray(params["codebook"])
  np.testing.assert_array_equal(new[::2], old[::2])
  z, _ = jax.jit(lambda p, x: vqgan.VQGAN(config.vqgan).apply({"params": p}, vqgan.from_pixels(x),
                                                             method=vqgan.VQGAN.encode))(params, pixels)
  latents = np.asarray(z).reshape(-1, config.vqgan.embed_dim)
  for row in new[1::2]:
    assert np.min(np.abs(latents - row).max(axis=1)) < 1e-6
  assert not np.asarray(state["restart_counts"]).any()


def test_trained_tokenizer_is_the_image_tokenizer_for_vq_kind_vqgan(run):
  config, workdir, _, _ = run
  lm_config = load_config_file("configs/tiny.py")
  lm_config.vq.kind, lm_config.vq.tokenizer_path = "vqgan", os.path.join(workdir, vq_loop.TOKENIZER_DIR)
  images = photos.PhotoCrops(32, seed=2).batch(0, 3)
  with pytest.raises(ValueError, match="config.vq has"):
    codes.image_tokenizer(lm_config)  # configs/tiny.py's vq section is 32px / patch 8: not this tokenizer
  lm_config.vq.patch_size, lm_config.vq.num_codes = 4, 32
  got = codes.image_tokenizer(lm_config)(images)
  _, want = vq_loop.make_reconstruct(config)(vq_weights.load_tokenizer(lm_config.vq.tokenizer_path)[0], images)
  assert got.shape == (3, 8, 8) and got.dtype == np.int32
  np.testing.assert_array_equal(got, np.asarray(want))
