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
