"""VQ Chameleon: the dims of Chameleon's image tokenizer (512px -> 32x32 codes from 8192 x 256, 128 channels,
multipliers [1, 1, 2, 2, 4], 2 ResNet blocks per level); import its weights or train it on an accelerator.

  unimodal-train-vq --config configs/vq_chameleon.py --workdir runs/vq_chameleon --config.vq_train.batch_size=64
"""
from unimodal_jax.config import default_config
from unimodal_jax.train import vq_loop
from unimodal_jax.vq import vqgan


def get_config():
  c = default_config()
  c.vqgan = vqgan.model_config()  # Chameleon's defaults
  c.vq_train = vq_loop.train_config(batch_size=64, num_steps=100_000, learning_rate=1e-4, disc_start=30_000,
                                     disc_channels=64, disc_layers=3, restart_every=1000, log_every=100,
                                     checkpoint_every=2000)
  c.vq.kind = "vqgan"
  c.vq.image_size, c.vq.patch_size, c.vq.num_codes = 512, vqgan.downsampling(c.vqgan), c.vqgan.num_embeddings
  return c
