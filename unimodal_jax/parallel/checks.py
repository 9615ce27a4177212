"""Validation of `config.mesh` against the devices, and of the sizes the mesh axes must divide."""
from unimodal_jax.config import ConfigError, check as _check
from unimodal_jax.parallel.mesh import mesh_shape


def check(config, num_devices: int, process_count: int = 1) -> tuple[int, int, int]:
  """Raise ConfigError unless the config's mesh, batch and sharded sizes fit `num_devices`; return the mesh shape."""
  m, d, t = config.model, config.data, config.train
  try:
    data, fsdp, tensor = mesh_shape(config.mesh, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  _check(t.batch_size % (data * fsdp) == 0, "train.batch_size",
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
  return data, fsdp, tensor
