"""Run configuration: the defaults every `configs/*.py` starts from, and their validation.

`validate` runs before anything is compiled; each error names the config key and the offending values.
"""
import ml_collections

DEFAULT_LOGICAL_AXIS_RULES = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("expert", None),
    # activations
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)
MESH_AXES = ("data", "fsdp", "tensor")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
NORM_ORDERS = ("pre", "swin")
QK_NORMS = ("none", "layernorm", "rmsnorm")
DTYPES = ("float32", "bfloat16", "float16")


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.vocab = ml_collections.ConfigDict()
  c.vocab.text_size = 1024  # text ids incl. <pad>=0, <bos>=1, <eos>=2; <boi>, <eoi>, codes follow

  c.vq = ml_collections.ConfigDict()
  c.vq.kind = "kmeans"  # k-means patch codebook (unimodal_jax/vq/kmeans.py)
  c.vq.image_size = 64  # images are resized to image_size x image_size
  c.vq.patch_size = 8  # one code per patch: (image_size // patch_size) ** 2 codes per image
  c.vq.num_codes = 256

  c.data = ml_collections.ConfigDict()
  c.data.source = "embedded"  # the bundled dataset (unimodal_jax/data/embedded.py)
  c.data.dir = ""  # where shards live; "" = <workdir>/data
  c.data.seq_len = 256
  c.data.shuffle = True
  c.data.loss_weight_text = 1.0
  c.data.loss_weight_image = 1.0
  c.data.worker_count = 0

  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 1408  # >= vocab size; padded so 'tensor' can divide it
  c.model.num_layers = 4
  c.model.embed_dim = 256
  c.model.num_heads = 4
  c.model.num_kv_heads = 4
  c.model.head_dim = 64
  c.model.mlp_dim = 768
  c.model.qk_norm = "layernorm"
  c.model.qkv_bias = False
  c.model.norm_order = "pre"
  c.model.norm_eps = 1e-5
  c.model.rope_theta = 10000.0
  c.model.tie_embeddings = False
  c.model.dropout_rate = 0.0
  c.model.z_loss = 1e-5
  c.model.remat_policy = "none"
  c.model.dtype = "float32"  # compute dtype; params are always float32

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: all devices not used by the other axes
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.logical_axis_rules = DEFAULT_LOGICAL_AXIS_RULES

  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 20
  c.optim.end_lr_ratio = 0.1
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.eps = 1e-5
  c.optim.weight_decay = 0.1
  c.optim.clip_norm = 1.0

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 16  # global, in rows of data.seq_len tokens
  c.train.num_steps = 200
  c.train.log_every = 10
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 2
  return c
