"""VQ tiny: a VQGAN small enough for tests (32px -> 8x8 codes from 32 x 8); seconds per hundred steps on CPU.

  unimodal-train-vq --config configs/vq_tiny.py --workdir /tmp/vq_tiny
"""
from unimodal_jax.config import default_config
from unimodal_jax.train import vq_loop
from unimodal_jax.vq import vqgan


def get_config():
  c = default_config()
  c.vqgan = vqgan.model_config(resolution=32, base_channels=8, channel_multiplier=(1, 2, 2), num_res_blocks=1,
                               attn_resolutions=(), latent_channels=8, embed_dim=8, num_embeddings=32,
                               norm_groups=4)
  c.vq_train = vq_loop.train_config(batch_size=8, num_steps=300, learning_rate=2e-3, warmup_steps=20,
                                     disc_channels=8, disc_layers=1, restart_every=50, log_every=50,
                                     checkpoint_every=100)
  c.vq.kind = "vqgan"
  c.vq.image_size, c.vq.patch_size, c.vq.num_codes = 32, vqgan.downsampling(c.vqgan), c.vqgan.num_embeddings
  return c
