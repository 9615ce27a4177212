"""Run configuration: the defaults every `configs/*.py` starts from, and the constants they name.

It imports no subsystem. Each part validates its own keys (`<part>/checks.py`); `train/validate.py` runs them all
before anything is compiled, and each error names the config key and the offending values.
"""
import importlib.util
import os

import ml_collections

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
# Mixture-of-Transformers weight groups that can have one copy per expert (model/experts.py routes them).
MOT_GROUPS = ("attention", "qk_norm", "mlp", "block_norms", "final_norm")
ARRAY_RECORD_WRITER_OPTIONS = "group_size:1"  # one record per chunk: cheap random access for global shuffling


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
  c.data.source = "embedded"  # one of data/checks.py DATA_SOURCES
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
  # Comma-separated document kinds to train and evaluate on ("" = all): "text" for text-only runs; image-only runs
  # keep "image_text_pair" with caption_first_ratio=1 and cfg_dropout=1 (<bos> <boi> codes <eoi> <eos>).
  c.data.document_kinds = ""
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
  # Output head + loss over blocks of this many positions (recomputed in the backward pass), so that the float32
  # [rows, seq_len, vocab] logits and their gradient never exist at once; 0 = off. Must divide data.seq_len.
  c.model.loss_chunk_size = 0
  c.model.remat_policy = "none"
  c.model.attention = "auto"  # one of model/attention.py IMPLEMENTATIONS; "auto": by platform (attention.resolve)
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
  c.train.peak_tflops_per_device = 0.0  # for MFU; 0 = the chip table's peak for a known TPU, else no MFU
  c.train.prefetch_batches = 2  # batches read and placed on the devices ahead, on a thread; 0 = in the loop
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

  # Samples during training (unimodal-train; unimodal_jax/sample/periodic.py): PNG grids and texts into TensorBoard
  # and <workdir>/samples every N steps. The unimodal-sample CLI takes the same options as flags.
  c.sample = ml_collections.ConfigDict()
  c.sample.every = 0  # 0 = never
  c.sample.prompts = ("A close-up of a ginger tabby cat's face.",)  # text after <bos>; "" = the null condition
  c.sample.mode = "image"  # "text", "image" (one image per sample) or "interleaved"
  c.sample.num_samples = 4  # per prompt
  c.sample.max_new_tokens = 64  # text and interleaved; image mode generates exactly one image
  c.sample.temperature = 1.0  # 0 = greedy
  c.sample.top_k = 0  # 0 = off
  c.sample.top_p = 1.0  # 1 = off
  c.sample.cfg = 3.0  # classifier-free guidance scale at image tokens; 0 = no guidance
  c.sample.seed = 0
  c.sample.text_tokenizer = ""  # "" = the run's data folder's tokenizer.json (data.dir or <workdir>/data)
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


def check(ok: bool, key: str, message: str):
  """Raise ConfigError naming `config.<key>` unless `ok`."""
  if not ok:
    raise ConfigError(f"config.{key}: {message}")
