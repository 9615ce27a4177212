"""Run configuration: the defaults every `configs/*.py` starts from, and their validation.

`validate` runs before anything is compiled; each error names the config key and the offending values.
"""
import importlib.util
import os

import ml_collections

from unimodal_jax.data.vocab import from_config
from unimodal_jax.data.vocab import MODALITIES
from unimodal_jax.model import experts
from unimodal_jax.model.attention import IMPLEMENTATIONS
from unimodal_jax.vq import codes

DEFAULT_LOGICAL_AXIS_RULES = (
    # parameters
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),  # RMSNorm scales: replicated
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
DATA_SOURCES = (
    "embedded",  # the bundled dataset, built on first use (unimodal_jax/data/embedded.py)
    "shards",  # tokenized-document ArrayRecord shards (unimodal_jax/data/documents.py) in data.dir
    "mixture",  # the weighted sources of data.sources (unimodal_jax/data/sources.py)
)
BAD_RECORD_MODES = ("raise", "skip")
MOT_GROUPS = experts.GROUPS
VQ_KINDS = ("kmeans", "vqgan")  # vq/codes.py; the embedded dataset fits its own k-means or uses vq.tokenizer_path


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.vocab = ml_collections.ConfigDict()
  c.vocab.text_size = 1024  # text ids incl. <pad>=0, <bos>=1, <eos>=2; <boi>, <eoi>, codes follow

  c.vq = ml_collections.ConfigDict()
  c.vq.kind = "kmeans"  # "kmeans": patch codebook (unimodal_jax/vq/kmeans.py); "vqgan": the learned tokenizer
  # codes per image: (image_size // patch_size) ** 2 (patch_size = the VQGAN downsampling factor)
  c.vq.image_size = 64  # images are resized to image_size x image_size
  c.vq.patch_size = 8  # one code per patch: (image_size // patch_size) ** 2 codes per image
  c.vq.num_codes = 256
  c.vq.tokenizer_path = ""  # the saved image tokenizer (kmeans: a codebook .npz; vqgan: the tokenizer directory
  # unimodal-train-vq writes, <workdir>/tokenizer), for vq/codes.py

  c.data = ml_collections.ConfigDict()
  c.data.source = "embedded"  # one of DATA_SOURCES
  c.data.dir = ""  # where shards live; for "embedded", "" = <workdir>/data
  c.data.seq_len = 256
  c.data.shuffle = True
  c.data.loss_weight_text = 1.0
  c.data.loss_weight_image = 1.0
  c.data.worker_count = 0
  # Disjoint data shards, each packed into its own rows of the batch; 0 = one per process. Fix it (e.g. to the
  # largest host count) to make the batches independent of how many processes serve them.
  c.data.num_shards = 0
  c.data.read_threads = 0  # threads reading records per process; 0 = in the pipeline's thread (fastest on local disk)
  # data.source='mixture': name -> ConfigDict(kind='shards', path=<glob or dir>, weight=w) or ConfigDict(
  # kind='tfds', path=<builder dir> or tfds_name=..., data_dir=..., split='train', weight=w[, text_feature,
  # image_feature]); records are drawn in proportion to the weights
  c.data.sources = ml_collections.ConfigDict()
  c.data.caption_first_ratio = 0.5  # image_text_pair documents rendered caption -> image, else image -> caption
  c.data.cfg_dropout = 0.0  # caption -> image pairs whose caption becomes the null condition (CM3Leon: 0.1)
  c.data.on_bad_record = "raise"  # "raise": stop naming file and record; "skip": log, count, go on
  c.data.max_document_tokens = 1 << 20  # longer documents are bad records

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
  c.model.attention = "xla"  # one of unimodal_jax.model.attention.IMPLEMENTATIONS
  c.model.num_experts = 1  # 1: dense; 2: Mixture-of-Transformers, one expert per modality (text, image)
  c.model.mot_untied = MOT_GROUPS  # weight groups with one copy per expert when num_experts > 1
  c.model.mot_impl = "grouped"  # "grouped" (ragged matmuls, dense FLOPs) or "masked" (the test oracle)
  c.model.dtype = "float32"  # compute dtype; params are always float32

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1: all devices not used by the other axes
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  # Multi-slice: the axes above are within a slice (ICI); these multiply them across slices (DCN).
  c.mesh.dcn_data = 1
  c.mesh.dcn_fsdp = 1
  c.mesh.dcn_tensor = 1
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
  c.optim.schedule = "cosine"  # one of train/state.py SCHEDULES: "cosine" or "wsd" (warmup-stable-decay)
  c.optim.decay_steps = 0  # wsd: length of the final decay phase
  c.optim.wsd_decay = "sqrt"  # wsd: "linear" or "sqrt" (1 - sqrt cooldown)
  c.optim.weight_decay_exclude = ("norms", "biases")  # any of "norms", "biases", "embeddings"

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 16  # global, in rows of data.seq_len tokens
  c.train.num_steps = 200
  c.train.log_every = 10
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 2
  c.train.peak_tflops_per_device = 0.0  # for MFU; 0 = unknown (MFU not logged)
  c.train.init_from = ""  # params (only) of a checkpoint step dir to start from, e.g. `unimodal-convert from-hf`
  c.train.upcycle_from = ""  # MoT only: a dense run's checkpoint step dir; every expert starts as its weights
  # Full state (params, optimizer, step, data position) of another run's checkpoint step dir, e.g. a WSD run's
  # stable-phase checkpoint to decay from; used when this workdir has no checkpoint yet.
  c.train.branch_from = ""
  c.train.keep_period = 0  # also keep every checkpoint whose step is a multiple of this forever; 0 = none
  c.train.grad_accum_steps = 1  # microbatches per step; train.batch_size is the sum over them
  c.train.max_consecutive_nonfinite = 5  # steps with NaN/Inf loss or gradients are skipped; halt after this many
  c.train.profile_start_step = -1  # jax.profiler trace of steps [start, start + profile_num_steps); -1 = none
  c.train.profile_num_steps = 3

  c.eval = ml_collections.ConfigDict()
  c.eval.every = 0  # held-out loss every N steps; 0 = no evaluation
  c.eval.num_batches = 4  # the same first batches of the held-out set each time
  c.eval.dir = ""  # held-out shards; "" with data.source='embedded': its last shard, left out of training
  return c


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a configs/*.py file (what `--config path` loads); configs may build on each other."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"unimodal_jax_configs.{name}", path)
  if spec is None:
    raise FileNotFoundError(f"no config file at {path}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


class ConfigError(ValueError):
  """A config value that cannot run; the message names the key and the offending values."""


def _check(ok: bool, key: str, message: str):
  if not ok:
    raise ConfigError(f"config.{key}: {message}")


def image_tokens_per_image(config) -> int:
  """Stream length of one image: <boi> + codes + <eoi>."""
  return (config.vq.image_size // config.vq.patch_size) ** 2 + 2


def _validate_training(config, batch_shards: int):
  """Optimizer, schedule, accumulation, evaluation and profiling keys."""
  from unimodal_jax.train.state import DECAY_EXCLUDABLE, SCHEDULES, WSD_DECAYS  # local: train imports config

  o, t, e = config.optim, config.train, config.eval
  _check(o.schedule in SCHEDULES, "optim.schedule", f"{o.schedule!r} is not one of {SCHEDULES}")
  if o.schedule == "wsd":
    _check(o.wsd_decay in WSD_DECAYS, "optim.wsd_decay", f"{o.wsd_decay!r} is not one of {WSD_DECAYS}")
    _check(0 < o.decay_steps <= t.num_steps - o.warmup_steps, "optim.decay_steps",
           f"{o.decay_steps} must be in [1, train.num_steps - optim.warmup_steps = {t.num_steps - o.warmup_steps}]")
  unknown = set(o.weight_decay_exclude) - set(DECAY_EXCLUDABLE)
  _check(not unknown, "optim.weight_decay_exclude", f"unknown classes {sorted(unknown)}; known: {DECAY_EXCLUDABLE}")
  _check(t.grad_accum_steps >= 1, "train.grad_accum_steps", f"must be >= 1, got {t.grad_accum_steps}")
  _check(t.batch_size % (batch_shards * t.grad_accum_steps) == 0, "train.grad_accum_steps",
         f"train.batch_size={t.batch_size} must split into {t.grad_accum_steps} microbatches of equal rows on each "
         f"of the {batch_shards} data-parallel shards")
  _check(t.max_consecutive_nonfinite >= 1, "train.max_consecutive_nonfinite",
         f"must be >= 1, got {t.max_consecutive_nonfinite}")
  _check(t.keep_period >= 0, "train.keep_period", f"must be >= 0, got {t.keep_period}")
  _check(sum(bool(x) for x in (t.init_from, t.upcycle_from, t.branch_from)) <= 1, "train.branch_from",
         f"give at most one of train.branch_from={t.branch_from!r}, init_from={t.init_from!r}, "
         f"upcycle_from={t.upcycle_from!r}")
  _check(t.profile_start_step < 0 or t.profile_num_steps >= 1, "train.profile_num_steps",
         f"must be >= 1 when profiling, got {t.profile_num_steps}")
  _check(e.every >= 0, "eval.every", f"must be >= 0, got {e.every}")
  _check(e.every == 0 or e.num_batches >= 1, "eval.num_batches", f"must be >= 1, got {e.num_batches}")


def validate(config, num_devices: int, process_count: int = 1):
  """Raise ConfigError for any setting that cannot run on `num_devices` devices; return the mesh shape."""
  from unimodal_jax.parallel.mesh import mesh_shape  # local: parallel.mesh imports MESH_AXES from here

  m, d, t = config.model, config.data, config.train
  _check(m.norm_order in NORM_ORDERS, "model.norm_order", f"{m.norm_order!r} is not one of {NORM_ORDERS}")
  _check(m.qk_norm in QK_NORMS, "model.qk_norm", f"{m.qk_norm!r} is not one of {QK_NORMS}")
  _check(m.remat_policy in REMAT_POLICIES, "model.remat_policy", f"{m.remat_policy!r} is not one of {REMAT_POLICIES}")
  _check(config.vq.kind in VQ_KINDS, "vq.kind", f"{config.vq.kind!r} is not one of {VQ_KINDS}")
  _check(d.source in DATA_SOURCES, "data.source", f"{d.source!r} is not one of {DATA_SOURCES}")
  _check(d.source != "shards" or d.dir, "data.dir", "data.source='shards' needs the directory of its shards")
  _check(d.source != "mixture" or len(d.sources) > 0, "data.sources", "data.source='mixture' needs named sources")
  for name in d.sources:
    entry, key = d.sources[name], f"data.sources.{name}"
    _check(entry.get("kind") in ("shards", "tfds"), f"{key}.kind", f"{entry.get('kind')!r} is not 'shards' or 'tfds'")
    _check(entry.get("weight", 0) > 0, f"{key}.weight", f"must be > 0, got {entry.get('weight')}")
    _check(bool(entry.get("path") or entry.get("tfds_name")), f"{key}.path",
           "needs a glob or directory of shards (kind='shards') or a TFDS builder directory / tfds_name")
    _check(entry.get("kind") != "tfds" or bool(entry.get("split")), f"{key}.split", "a tfds source needs a split")
  _check(d.on_bad_record in BAD_RECORD_MODES, "data.on_bad_record",
         f"{d.on_bad_record!r} is not one of {BAD_RECORD_MODES}")
  for key in ("caption_first_ratio", "cfg_dropout"):
    _check(0.0 <= d[key] <= 1.0, f"data.{key}", f"must be in [0, 1], got {d[key]}")
  _check(d.max_document_tokens >= 3, "data.max_document_tokens", f"must be >= 3, got {d.max_document_tokens}")
  if d.source == "embedded" and config.vq.kind == "vqgan":  # the build tokenizes the photos with this VQGAN
    _check(bool(config.vq.tokenizer_path), "vq.tokenizer_path",
           "data.source='embedded' with vq.kind='vqgan' needs the saved VQGAN's directory")
    try:
      codes.check_vqgan_dims(config)
    except ValueError as e:
      raise ConfigError(str(e)) from e
  _check(m.attention in IMPLEMENTATIONS, "model.attention", f"{m.attention!r} is not one of {IMPLEMENTATIONS}")
  _check(m.num_experts in (1, len(MODALITIES)), "model.num_experts",
         f"{m.num_experts}: 1 (dense) or {len(MODALITIES)} (one expert per modality {MODALITIES})")
  unknown = set(m.mot_untied) - set(MOT_GROUPS)
  _check(not unknown, "model.mot_untied", f"unknown groups {sorted(unknown)}; known: {MOT_GROUPS}")
  _check(m.mot_impl in experts.IMPLEMENTATIONS, "model.mot_impl",
         f"{m.mot_impl!r} is not one of {experts.IMPLEMENTATIONS}")
  _check(m.dtype in DTYPES, "model.dtype", f"{m.dtype!r} is not one of {DTYPES}")
  for key in ("num_layers", "embed_dim", "num_heads", "num_kv_heads", "head_dim", "mlp_dim"):
    _check(m[key] >= 1, f"model.{key}", f"must be >= 1, got {m[key]}")
  _check(m.num_heads % m.num_kv_heads == 0, "model.num_kv_heads",
         f"num_heads={m.num_heads} is not divisible by num_kv_heads={m.num_kv_heads}")
  _check(m.head_dim % 2 == 0, "model.head_dim", f"RoPE needs an even head_dim, got {m.head_dim}")
  _check(0.0 <= m.dropout_rate < 1.0, "model.dropout_rate", f"must be in [0, 1), got {m.dropout_rate}")

  try:
    vocab = from_config(config)
  except ValueError as e:
    raise ConfigError(f"config.vocab / config.vq: {e}") from e
  _check(m.vocab_size >= vocab.size, "model.vocab_size",
         f"{m.vocab_size} is smaller than the unified vocabulary ({vocab.text_size} text ids + <boi>, <eoi> + "
         f"{vocab.num_image_codes} image codes = {vocab.size})")
  _check(config.vq.image_size % config.vq.patch_size == 0, "vq.image_size",
         f"{config.vq.image_size} is not a multiple of vq.patch_size={config.vq.patch_size}")
  per_image = image_tokens_per_image(config)
  _check(d.seq_len >= per_image, "data.seq_len",
         f"{d.seq_len} cannot hold one image of {per_image} tokens (<boi> + codes + <eoi>); images are never split")

  try:
    data, fsdp, tensor = mesh_shape(config.mesh, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  batch_shards = data * fsdp
  _check(t.batch_size % batch_shards == 0, "train.batch_size",
         f"{t.batch_size} is not divisible by the data-parallel size mesh.data*mesh.fsdp = {data}*{fsdp}")
  _check(t.batch_size % process_count == 0, "train.batch_size",
         f"{t.batch_size} is not divisible by the process count {process_count}")
  shards = d.num_shards or process_count
  _check(d.num_shards >= 0 and shards % process_count == 0 and t.batch_size % shards == 0, "data.num_shards",
         f"{d.num_shards}: must be 0 (one per process) or a multiple of the {process_count} processes that divides "
         f"train.batch_size={t.batch_size}")
  for key, size in (("num_heads", m.num_heads), ("num_kv_heads", m.num_kv_heads), ("mlp_dim", m.mlp_dim),
                    ("vocab_size", m.vocab_size)):
    _check(size % tensor == 0, f"model.{key}", f"{size} is not divisible by mesh.tensor={tensor}")
  _check(m.embed_dim % fsdp == 0, "model.embed_dim", f"{m.embed_dim} is not divisible by mesh.fsdp={fsdp}")
  _check(not t.upcycle_from or m.num_experts > 1, "train.upcycle_from",
         f"upcycling initialises a Mixture-of-Transformers; model.num_experts={m.num_experts}")
  _check(t.num_steps >= 1, "train.num_steps", f"must be >= 1, got {t.num_steps}")
  _check(config.optim.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {config.optim.warmup_steps}")
  _validate_training(config, data * fsdp)
  return data, fsdp, tensor
