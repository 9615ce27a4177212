"""Config validation: every bad setting is reported before compiling, naming its key and values."""
import pytest

from test_model import load_config
from unimodal_jax.config import ConfigError
from unimodal_jax.train.validate import validate

CASES = [
    ("mesh", {"mesh.data": 3, "mesh.fsdp": 1}, "config.mesh", "3"),
    ("batch", {"train.batch_size": 6, "mesh.data": 4, "mesh.fsdp": 2}, "config.train.batch_size", "6"),
    ("kv_heads", {"model.num_kv_heads": 3}, "config.model.num_kv_heads", "num_heads=4"),
    ("head_dim", {"model.head_dim": 15}, "config.model.head_dim", "15"),
    ("vocab", {"model.vocab_size": 512}, "config.model.vocab_size", "512"),
    ("seq_len", {"data.seq_len": 10}, "config.data.seq_len", "18 tokens"),
    ("tensor", {"mesh.data": 2, "mesh.tensor": 4}, "config.model.num_kv_heads", "mesh.tensor=4"),
    ("norm_order", {"model.norm_order": "post"}, "config.model.norm_order", "'post'"),
    ("remat", {"model.remat_policy": "everything"}, "config.model.remat_policy", "'everything'"),
    ("shards_dir", {"data.source": "shards"}, "config.data.dir", "shards"),
    ("patch", {"vq.patch_size": 5}, "config.vq.image_size", "vq.patch_size=5"),
]
# Ranges: every key with a meaningful range, each with a value outside it (the run would train silently or fail after
# compiling).
RANGES = [
    ("optim.learning_rate", -1e-3), ("optim.learning_rate", 0.0), ("optim.b1", 1.5), ("optim.b1", -0.1),
    ("optim.b2", 1.0), ("optim.eps", 0.0), ("optim.weight_decay", -0.1), ("optim.clip_norm", -1.0),
    ("optim.clip_norm", 0.0), ("optim.end_lr_ratio", 1.5), ("optim.warmup_steps", -1), ("optim.warmup_steps", 10_000),
    ("model.rope_theta", -10000.0), ("model.rope_theta", 0.0), ("model.norm_eps", 0.0), ("model.z_loss", -1e-4),
    ("model.dropout_rate", 1.0), ("model.dropout_rate", -0.1), ("model.num_layers", 0), ("model.embed_dim", 0),
    ("model.vocab_size", 0), ("train.batch_size", 0), ("train.num_steps", 0), ("train.log_every", 0),
    ("train.checkpoint_every", 0), ("train.keep_checkpoints", 0), ("train.grad_accum_steps", 0),
    ("train.max_consecutive_nonfinite", 0), ("train.keep_period", -1), ("train.peak_tflops_per_device", -1.0),
    ("eval.every", -1), ("data.seq_len", 1), ("data.loss_weight_text", -1.0), ("data.loss_weight_image", -0.5),
    ("data.caption_first_ratio", 1.5), ("data.cfg_dropout", -0.1), ("data.worker_count", -1),
    ("data.read_threads", -2), ("data.num_shards", -1), ("data.max_document_tokens", 2), ("vq.num_codes", 0),
    ("vq.image_size", 0), ("vq.patch_size", 0), ("vocab.text_size", 3),
]


@pytest.mark.parametrize("key,value", RANGES, ids=[f"{k}={v}" for k, v in RANGES])
def test_out_of_range_values_name_the_key_and_the_value(key, value):
  c = load_config("tiny")
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(ConfigError) as e:
    validate(c, num_devices=8)
  assert f"config.{key}" in str(e.value) and str(value) in str(e.value), str(e.value)


def test_both_loss_weights_zero_is_refused():
  c = load_config("tiny")
  c.data.loss_weight_text = c.data.loss_weight_image = 0.0
  with pytest.raises(ConfigError, match="both 0"):
    validate(c, num_devices=8)


@pytest.mark.parametrize("overrides,key,value", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_config_names_key_and_value(overrides, key, value):
  c = load_config("tiny")
  for k, v in overrides.items():
    section, name = k.split(".")
    c[section][name] = v
  with pytest.raises(ConfigError) as e:
    validate(c, num_devices=8)
  assert key in str(e.value) and value in str(e.value), str(e.value)


@pytest.mark.parametrize("name", ["tiny", "demo", "chameleon_7b", "chameleon_34b", "mot_tiny", "mot_chameleon_7b",
                                  "mot_chameleon_34b", "mot_bagel_7b", "mot_demo"])
def test_shipped_configs_are_valid(name):
  c = load_config(name)
  if c.data.source == "shards":
    c.data.dir = "/data/shards"
  assert validate(c, num_devices=8) is not None
