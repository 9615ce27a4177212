"""VQ photos: the small tokenizer trained on the scikit-image photographs (64px -> 8x8 codes from 256 x 16), the
dims the demo's vq section uses (image_size 64, patch_size 8, num_codes 256).

  unimodal-train-vq --config configs/vq_photos.py --workdir runs/vq_photos
About 12.5 minutes of CPU time (2 cores). Result (docs/benchmarks.md, "VQGAN image tokenizer"): eval PSNR 21.3 dB,
94% of the codebook used on the photos' centre squares.
"""
from unimodal_jax.config import default_config
from unimodal_jax.train import vq_loop
from unimodal_jax.vq import vqgan


def get_config():
  c = default_config()
  c.vqgan = vqgan.model_config(resolution=64, base_channels=16, channel_multiplier=(1, 2, 4, 4), num_res_blocks=1,
                               attn_resolutions=(), latent_channels=32, embed_dim=16, num_embeddings=256,
                               norm_groups=8)
  c.vq_train = vq_loop.train_config(batch_size=8, num_steps=1500, learning_rate=5e-4, warmup_steps=50,
                                     l1_weight=1.0, l2_weight=1.0, restart_every=100, log_every=50,
                                     checkpoint_every=500, disc_start=-1)
  c.vq.kind = "vqgan"
  c.vq.image_size, c.vq.patch_size, c.vq.num_codes = 64, vqgan.downsampling(c.vqgan), c.vqgan.num_embeddings
  return c
