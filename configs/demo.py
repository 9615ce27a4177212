"""Demo: a small early-fusion model on the embedded dataset (pydoc prose + scikit-image photos), CPU.

Images are coded by the VQGAN that ships in the package (unimodal_jax/vq/assets/photos_tokenizer, trained by
configs/vq_photos.py); `--config.vq.kind=kmeans` codes them with a k-means patch codebook fitted on the photos.

  unimodal-train --config configs/demo.py --workdir runs/demo

Expected on 2 CPU cores: ~4 minutes for 300 steps; loss falls from ~7.4 to ~3.8 (loss/text ~3.8, loss/image ~3.9;
k-means codes: loss/image ~2.5, docs/benchmarks.md).
"""
from unimodal_jax.config import default_config
from unimodal_jax.vq import codes


def get_config():
  c = default_config()
  c.vocab.text_size = 1024
  c.vq.image_size = 64
  c.vq.patch_size = 8  # 8x8 = 64 codes per image
  c.vq.num_codes = 256
  c.vq.kind = "vqgan"
  c.vq.tokenizer_path = codes.PHOTOS_TOKENIZER  # 64px -> 8x8 codes of 256, as above
  c.data.seq_len = 256
  c.model.vocab_size = 1408
  c.model.num_layers = 4
  c.model.embed_dim = 256
  c.model.num_heads = 4
  c.model.num_kv_heads = 4
  c.model.head_dim = 64
  c.model.mlp_dim = 768
  c.train.batch_size = 8
  c.train.num_steps = 300
  c.train.log_every = 10
  c.train.checkpoint_every = 100
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 20
  return c
