"""BAGEL-7B MoT dimensions (Deng et al. 2025): Qwen2.5-7B per expert (GQA 28/4, qkv bias, rope theta 1e6,
RMS QK-norm), an understanding (text) and a generation (image) expert, every non-embedding weight untied.

BAGEL generates images from continuous VAE latents; here the image expert predicts VQ codes (8,192, 32x32
per 512px image) as in Chameleon. Text ids: Qwen2.5's 151,936 (padded tokenizer size).
Target slice: v5p-256 (128 chips, FSDP over all) at 2,048 x 4,096 in one pass:
  unimodal-plan --config configs/mot_bagel_7b.py --topology v5p-256
"""
from unimodal_jax.config import default_config


def get_config():
  c = default_config()
  c.vocab.text_size = 151_936
  c.vq.kind = "vqgan"
  c.vq.image_size = 512
  c.vq.patch_size = 16  # the VQGAN's downsampling factor: 32x32 codes
  c.vq.num_codes = 8192
  c.data.source = "shards"
  c.data.dir = ""  # set on the command line: --config.data.dir=<tokenized shards>
  c.data.seq_len = 4096
  c.model.vocab_size = 160_256  # 151,936 + <boi>, <eoi> + 8,192 codes, padded to a multiple of 128
  c.model.num_layers = 28
  c.model.embed_dim = 3584
  c.model.num_heads = 28
  c.model.num_kv_heads = 4
  c.model.head_dim = 128
  c.model.mlp_dim = 18944
  c.model.qkv_bias = True
  c.model.qk_norm = "rmsnorm"
  c.model.norm_eps = 1e-6
  c.model.rope_theta = 1_000_000.0
  c.model.tie_embeddings = False
  c.model.z_loss = 1e-5
  c.model.num_experts = 2
  c.model.loss_chunk_size = 512  # output head + loss over 512 positions at a time: no full float32 logits
  c.model.remat_policy = "full"
  c.model.attention = "auto"  # splash on TPU
  c.model.dtype = "bfloat16"
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.train.batch_size = 2048
  c.train.num_steps = 100_000
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 2000
  c.optim.end_lr_ratio = 0.0
  return c
