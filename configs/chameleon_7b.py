"""Chameleon-7B shapes (Team Chameleon 2024): pre-norm, QK-norm (LayerNorm), z-loss, dropout 0.1.

65,536 ids in all: 57,342 text + <boi>/<eoi> + 8,192 VQ codes; 512px images -> 32x32 codes.
Batch: 2,048 rows x 4,096 tokens (~8M tokens), in one pass.
Target slice: v5p-256 (128 chips, FSDP over all); fits as shipped (docs/pod_plans.md, tests/test_pod_fit.py):
  unimodal-plan --config configs/chameleon_7b.py --topology v5p-256
"""
from unimodal_jax.config import default_config


def get_config():
  c = default_config()
  c.vocab.text_size = 65536 - 8192 - 2
  c.vq.kind = "vqgan"
  c.vq.image_size = 512
  c.vq.patch_size = 16  # the VQGAN's downsampling factor: 32x32 codes
  c.vq.num_codes = 8192
  c.data.source = "shards"
  c.data.dir = ""  # set on the command line: --config.data.dir=<tokenized shards>
  c.data.seq_len = 4096
  c.model.vocab_size = 65536
  c.model.num_layers = 32
  c.model.embed_dim = 4096
  c.model.num_heads = 32
  c.model.num_kv_heads = 32
  c.model.head_dim = 128
  c.model.mlp_dim = 11008
  c.model.qk_norm = "layernorm"
  c.model.norm_order = "pre"
  c.model.dropout_rate = 0.1
  c.model.z_loss = 1e-5
  c.model.loss_chunk_size = 512  # output head + loss over 512 positions at a time: no full float32 logits
  c.model.remat_policy = "full"
  c.model.attention = "auto"  # splash on TPU: no [rows, heads, 4096, 4096] float32 scores
  c.model.dtype = "bfloat16"
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.train.batch_size = 2048
  c.train.num_steps = 250_000
  c.optim.learning_rate = 1e-4
  c.optim.warmup_steps = 4000
  c.optim.end_lr_ratio = 0.0
  return c
