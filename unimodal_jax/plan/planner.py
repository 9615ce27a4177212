"""Ahead-of-time plans: compile the real train step for a set of devices (a TPU pod from topology.py) and
read per-chip memory and FLOPs from the executable. Builds everything as training does; allocates nothing.
"""
import dataclasses
import math

import jax

from unimodal_jax import config as config_lib
from unimodal_jax.model import attention as attention_lib, flops as flops_lib
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.plan import aot
from unimodal_jax.train import validate as validate_lib

OUT_OF_MEMORY = "RESOURCE_EXHAUSTED"  # how the TPU compiler says a program does not fit in HBM
# A quick plan's reduced depths: 2 and 3, not 1, because a scan of one trip is inlined and compiles differently.
QUICK_DEPTHS = (2, 3)


@dataclasses.dataclass(frozen=True)
class Memory:
  """Bytes per chip from the compiled executable's memory analysis."""
  arguments: int  # train state shard + batch shard
  outputs: int
  aliased: int  # outputs written into donated arguments (the state)
  temporaries: int  # activations, gradients, optimizer scratch
  generated_code: int

  @property
  def peak(self) -> int:
    """Everything live at once: an upper estimate of the high-water mark."""
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.generated_code


@dataclasses.dataclass(frozen=True)
class Plan:
  mesh: tuple[int, int, int]  # (data, fsdp, tensor)
  attention: str  # the implementation compiled (model.attention, "auto" resolved for the devices)
  hbm_bytes: int  # usable per chip
  memory: Memory | None  # None: the compiler ran out of HBM (see `error`)
  error: str
  flops_per_chip: float | None  # one step as compiled (remat recompute, XLA's full score squares) + kernels

  @property
  def fits(self) -> bool:
    return self.memory is not None and self.memory.peak <= self.hbm_bytes


def planning_config(config):
  """The config as planned: no data is read, so a 'shards' source needs no data.dir."""
  config = config.copy_and_resolve_references()
  if config.data.source == "shards" and not config.data.dir:
    config.data.dir = "<not read by the planner>"
  return config


def with_overrides(config, **sections):
  """A copy of `config` with e.g. model={'num_layers': 1}, mesh={'fsdp': 8} applied."""
  config = config.copy_and_resolve_references()
  for section, values in sections.items():
    config[section].update(values)
  return config


def compile_train_step(config, devices):
  """The real train step (model, AdamW, sharding rules, remat, attention) compiled for `devices`.

  Raises jax.errors.JaxRuntimeError with RESOURCE_EXHAUSTED when the TPU compiler finds it does not fit.
  """
  slices = len({getattr(d, "slice_index", 0) for d in devices})
  dcn = math.prod(mesh_lib.dcn_shape(config.mesh))
  if slices != dcn:  # the mesh must put its dcn_* axes exactly across the slices, as training does
    raise config_lib.ConfigError(f"config.mesh.dcn_*: the devices span {slices} slice(s), but dcn_data * dcn_fsdp * "
                                 f"dcn_tensor = {dcn}")
  return aot.lower_train_step(config, devices).compile()


def memory_per_chip(compiled) -> Memory:
  stats = compiled.memory_analysis()
  return Memory(arguments=stats.argument_size_in_bytes, outputs=stats.output_size_in_bytes,
                aliased=stats.alias_size_in_bytes, temporaries=stats.temp_size_in_bytes,
                generated_code=stats.generated_code_size_in_bytes)


def flops_per_chip(config, devices) -> float:
  """FLOPs per chip of one train step: XLA's count corrected for `nn.scan`, plus the Pallas kernels'.

  XLA's cost analysis counts a while-loop body once, whatever its trip count; a loop of one trip is
  inlined, and XLA then merges the remat recompute with the forward (prevent_cse=False), which no deeper
  model gets. So the stack is compiled at 0, 2 and 3 layers: F(2) - F(0) = 2 b + body and F(3) - F(2) = b,
  where b is a layer's cost outside the loop (its optimizer update, independent of the batch) and body one
  trip of the loops (forward, recompute, backward); then F(L) = F(0) + L (b + body). The variants compile
  at 1 and 2 rows per batch shard (small enough where the full step does not fit), and every term is
  affine in the rows, so F is extrapolated linearly to the real rows per shard. They compile without
  gradient accumulation, whose microbatch loop XLA would also count once: accumulating changes only a few
  gradient additions per parameter, not the forward/backward or the optimizer work of the whole batch.
  The chunked loss (`model.loss_chunk_size`) is two more loops, forward and backward, each counted for one chunk:
  a compile with another chunk size gives the cost per position of both, and the other seq_len - chunk positions
  are added. (A trip's fixed cost, the head gradient's running sum, stays counted once: embed x vocab additions
  per chunk, under 1 / (2 rows x chunk) of a chunk's matmuls.)
  """
  data, fsdp, _ = validate_lib.validate(config, len(devices))

  chunk, seq_len = config.model.loss_chunk_size, config.data.seq_len

  def flops(num_layers: int, rows: int, loss_chunk_size: int = chunk) -> float:
    variant = with_overrides(config, model={"num_layers": num_layers, "loss_chunk_size": loss_chunk_size},
                             train={"batch_size": rows * data * fsdp, "grad_accum_steps": 1})
    return compile_train_step(variant, devices).cost_analysis()["flops"]

  f = {(n, rows): flops(n, rows) for n, rows in ((0, 1), (0, 2), (2, 1), (2, 2), (3, 1))}
  b = f[3, 1] - f[2, 1]
  at_rows = {rows: f[0, rows] + config.model.num_layers * (f[2, rows] - f[0, rows] - b) for rows in (1, 2)}
  if 0 < chunk < seq_len:  # the loss's loops counted one chunk: add the other positions
    other = other_loss_chunk_size(seq_len, chunk)
    for rows in (1, 2):
      at_rows[rows] += (seq_len - chunk) * (f[0, rows] - flops(0, rows, other)) / (chunk - other)
  rows = config.train.batch_size // (data * fsdp)
  xla = at_rows[1] + (rows - 1) * (at_rows[2] - at_rows[1])
  return xla + kernel_flops_per_chip(config, devices)


def other_loss_chunk_size(seq_len: int, chunk: int) -> int:
  """The divisor of seq_len nearest `chunk` (and smaller on a tie) that still makes more than one chunk."""
  sizes = [d for d in range(1, seq_len) if seq_len % d == 0 and d != chunk]
  if not sizes:
    raise ValueError(f"model.loss_chunk_size={chunk}: no other chunk size divides data.seq_len={seq_len} into "
                     "several chunks, which counting the chunked loss's FLOPs needs; use 0 (off) or another size")
  return min(sizes, key=lambda d: (abs(d - chunk), d))


def memory_from_depths(memories: dict, num_layers: int) -> Memory:
  """Memory per chip at `num_layers`, extrapolated linearly from two compiles at reduced depths {depth: Memory}.

  Under `nn.scan` each layer adds the same bytes: its shard of params, gradients and Adam state (arguments,
  outputs, aliased) and the activations the remat policy keeps for the backward pass (temporaries); the rest
  (embedding, head, loss chunks, batch, one layer's working set, the code) does not grow with depth. So every
  field is nearly affine in the depth, and two depths determine it. Against full-depth compiles of the shipped
  configs the peak from 2 and 3 layers came out between 4% low and 10% high (docs/pod_plans.md, "How far the quick
  plan is from the full compile").
  """
  if len(memories) != 2:
    raise ValueError(f"memory_from_depths: needs compiles at exactly two depths, got {sorted(memories)}")
  (a, at_a), (b, at_b) = sorted(memories.items())
  if at_b.peak < at_a.peak:
    raise ValueError(f"memory_from_depths: the peak falls from {at_a.peak} bytes at {a} layers to {at_b.peak} at {b}: "
                     "the reduced-depth compiles do not show the per-layer memory; plan the full depth")

  def field(name: str) -> int:
    low, high = getattr(at_a, name), getattr(at_b, name)
    return low + (high - low) * (num_layers - a) // (b - a)

  return Memory(**{f.name: field(f.name) for f in dataclasses.fields(Memory)})


def extrapolated_memory(config, devices, depths: tuple[int, int] = QUICK_DEPTHS) -> Memory:
  """Memory per chip of the full-depth train step from compiles at `depths` layers (memory_from_depths).

  Raises jax.errors.JaxRuntimeError with RESOURCE_EXHAUSTED when even a reduced-depth step does not fit.
  """
  if config.model.num_layers <= max(depths):
    return memory_per_chip(compile_train_step(config, devices))
  memories = {n: memory_per_chip(compile_train_step(with_overrides(config, model={"num_layers": n}), devices))
              for n in depths}
  return memory_from_depths(memories, config.model.num_layers)


def attention_for(config, devices) -> str:
  """The attention implementation the train step compiles for `devices`: model.attention, "auto" resolved."""
  m = config.model
  return attention_lib.resolve(m.attention, devices[0].platform, m.dtype, m.head_dim, config.data.seq_len)


def kernel_flops_per_chip(config, devices) -> float:
  """FLOPs per chip of the Pallas attention kernels, which XLA's cost analysis cannot see into (0 for XLA).

  Splash computes the causal half of each score matrix. A forward is 2 matmuls (scores, weighted values);
  its backward (separate dq and dkv kernels, the default) recomputes the scores in each and runs 7 (dq: scores,
  dp, dq; dkv: scores, dv, dp, dk), i.e. 3.5 forwards; every remat policy recomputes the forward once more
  (a kernel output is not a saveable dot).
  """
  if attention_for(config, devices) != "splash":
    return 0.0
  m = config.model
  forwards = 1 + 3.5 + (m.remat_policy != "none")
  tokens = config.train.batch_size * config.data.seq_len
  return forwards * m.num_layers * flops_lib.attention_flops(m, config.data.seq_len) * tokens / len(devices)


def model_flops(config) -> float:
  """Model FLOPs of one step as MFU counts them (model/flops.py: 3x forward, causal attention, no remat)."""
  tokens = config.train.batch_size * config.data.seq_len
  return tokens * flops_lib.train_flops_per_token(config.model, config.data.seq_len)


def make_plan(config, devices, hbm_bytes: int, with_flops: bool = True, quick: bool = False) -> Plan:
  """Validate `config` for len(devices), compile its train step and measure it. Raises ConfigError.

  quick: memory from reduced-depth compiles (extrapolated_memory) instead of the full-depth one.
  """
  mesh = validate_lib.validate(config, len(devices))
  full = lambda: memory_per_chip(compile_train_step(config, devices))
  memory, error = _unless_out_of_memory(lambda: extrapolated_memory(config, devices) if quick else full())
  flops = _unless_out_of_memory(lambda: flops_per_chip(config, devices))[0] if with_flops else None
  return Plan(mesh=mesh, attention=attention_for(config, devices), hbm_bytes=hbm_bytes, memory=memory, error=error,
              flops_per_chip=flops)


def _unless_out_of_memory(compile_fn):
  """(compile_fn(), '') or (None, the compiler's message) when it ran out of HBM; other errors propagate."""
  try:
    return compile_fn(), ""
  except jax.errors.JaxRuntimeError as e:
    if OUT_OF_MEMORY not in str(e):
      raise
    return None, str(e).splitlines()[0]


def mesh_shapes(config, num_devices: int) -> list[tuple[int, int, int]]:
  """Every per-slice (data, fsdp, tensor) of num_devices (over all slices) that `train.validate.validate` accepts."""
  shapes = []
  per_slice = num_devices // math.prod(mesh_lib.dcn_shape(config.mesh))
  for data in range(1, per_slice + 1):
    for fsdp in range(1, per_slice // data + 1):
      tensor = per_slice // (data * fsdp)
      if data * fsdp * tensor != per_slice:
        continue
      try:
        validate_lib.validate(with_overrides(config, mesh={"data": data, "fsdp": fsdp, "tensor": tensor}),
                            num_devices)
      except config_lib.ConfigError:
        continue
      shapes.append((data, fsdp, tensor))
  return shapes
