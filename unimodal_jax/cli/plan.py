"""`unimodal-plan`: does a config fit a TPU slice, and how fast can its step be at best? Compiles the real
train step ahead of time on this host (needs libtpu, no TPU) and prints per-chip HBM, FLOPs and a bound.

  unimodal-plan --config configs/chameleon_7b.py --topology v5p-256 [--slices 2] [--noflops] [--quick] \\
      [--sweep_mesh] [--config.model.attention=splash ...]

Exit status: 0 it fits; 1 it does not (with --sweep_mesh: no mesh fits); 2 the config cannot run at all.
"""
import math
import sys

import jax
from absl import flags
from ml_collections import config_flags

from unimodal_jax.config import ConfigError
from unimodal_jax.cli import common
from unimodal_jax.parallel import mesh as mesh_lib
from unimodal_jax.plan import planner as plan_lib, topology as topology_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice: an accelerator type (v5p-256, v5e-8, v6e-256) or "
                                "<generation>:<shape> (v5p:4x4x12). See docs/topologies.md.")
_SLICES = flags.DEFINE_integer("slices", 1, "Number of such slices (multislice over the data-center network).")
_FLOPS = flags.DEFINE_bool("flops", True, "Measure FLOPs per step (five more compiles of 0-3 layer variants); "
                           "--noflops: memory and fit only.")
_QUICK = flags.DEFINE_bool("quick", False, "Memory from 2- and 3-layer compiles extrapolated linearly to the full "
                           "depth (plan.planner.memory_from_depths) instead of the full-depth compile; its error "
                           "on the shipped configs: docs/pod_plans.md.")
_SWEEP_MESH = flags.DEFINE_bool("sweep_mesh", False, "Compile every (data, fsdp, tensor) factorisation of the "
                                "device count that the config allows and print a table.")
flags.mark_flags_as_required(["config", "topology"])

LEVERS = ("model.remat_policy=full", "model.attention=splash", "a smaller train.batch_size", "a larger mesh.fsdp or "
          "mesh.tensor (--sweep_mesh tries them all)", "more chips")


def gib(n: float) -> str:
  return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def describe(plan, config, topology, quick: bool = False) -> str:
  g, m = topology.generation, config.model
  data, fsdp, tensor = plan.mesh
  attention = plan.attention + (" (model.attention=auto)" if m.attention == "auto" else "")
  accum = f" in {config.train.grad_accum_steps} microbatches" if config.train.grad_accum_steps > 1 else ""
  lines = [f"{topology.name}: {topology.chips} chips, {gib(g.hbm_bytes)} usable HBM and {g.peak_bf16_flops / 1e12:.0f} "
           f"TFLOP/s bf16 peak each",
           f"mesh data={data} fsdp={fsdp} tensor={tensor}; batch {config.train.batch_size} x {config.data.seq_len} "
           f"tokens{accum}; loss chunk {m.loss_chunk_size or 'off'}; remat {m.remat_policy}; attention {attention}; "
           f"dtype {m.dtype}; {m.num_layers} layers"]
  if plan.memory is None:
    lines.append(f"HBM per chip: the compiler ran out: {plan.error}")
  else:
    mem = plan.memory
    lines += [f"HBM per chip{' (--quick: extrapolated from 2 and 3 layers)' if quick else ''}:",
              f"  arguments       {gib(mem.arguments):>12}  (train state and batch shards)",
              f"  outputs         {gib(mem.outputs):>12}",
              f"  aliased         {gib(mem.aliased):>12}  (outputs written into the donated state)",
              f"  temporaries     {gib(mem.temporaries):>12}",
              f"  generated code  {gib(mem.generated_code):>12}",
              f"  peak estimate   {gib(mem.peak):>12}  = arguments + outputs - aliased + temporaries + code; "
              f"{100 * mem.peak / plan.hbm_bytes:.0f}% of {gib(plan.hbm_bytes)}"]
  model = plan_lib.model_flops(config)
  chips_peak = topology.chips * g.peak_bf16_flops
  if plan.flops_per_chip is None:
    lines.append("FLOPs per step: not measured (--noflops, or even 1-2 rows per batch shard ran out of HBM)")
  else:
    total = plan.flops_per_chip * topology.chips
    kernels = "; splash kernels counted analytically" if plan.attention == "splash" else ""
    lines.append(f"FLOPs per step: {total:.3e} as compiled (XLA's count, scan-corrected, remat recompute "
                 f"included{kernels}), {model:.3e} model (3x forward, causal)")
    lines.append(f"step time at peak: >= {total / chips_peak:.3g} s as compiled; {model / chips_peak:.3g} s of model "
                 f"FLOPs (100% MFU)")
  return "\n".join(lines)


def verdict(plan, topology) -> str:
  if plan.fits:
    return f"FITS on {topology.name}."
  reason = ("the TPU compiler ran out of HBM (above)" if plan.memory is None else
            f"peak estimate {gib(plan.memory.peak)} > {gib(plan.hbm_bytes)} usable HBM per chip")
  return f"DOES NOT FIT on {topology.name}: {reason}. Levers: {'; '.join(LEVERS)}."


def sweep(config, devices, topology) -> bool:
  """Print one row per mesh the config allows (memory only: one compile each); True when one fits."""
  print("| data | fsdp | tensor | arguments | temporaries | peak / chip | fits |")
  print("|---|---|---|---|---|---|---|")
  any_fits = False
  for data, fsdp, tensor in plan_lib.mesh_shapes(config, len(devices)):
    variant = plan_lib.with_overrides(config, mesh={"data": data, "fsdp": fsdp, "tensor": tensor})
    plan = plan_lib.make_plan(variant, devices, topology.generation.hbm_bytes, with_flops=False)
    mem = plan.memory
    cells = ("-", "-", "out of HBM") if mem is None else (gib(mem.arguments), gib(mem.temporaries), gib(mem.peak))
    print(f"| {data} | {fsdp} | {tensor} | {' | '.join(cells)} | {'yes' if plan.fits else 'no'} |", flush=True)
    any_fits |= plan.fits
  return any_fits


def main():
  # Plans compile for the named topology and run nothing here: leave this host's accelerators (a TPU VM's
  # chips may be training) and libtpu's lock alone.
  jax.config.update("jax_platforms", "cpu")
  topology = topology_lib.parse(_TOPOLOGY.value, _SLICES.value)
  devices = topology_lib.tpu_devices(_TOPOLOGY.value, _SLICES.value)
  config = plan_lib.planning_config(_CONFIG.value)
  if _SLICES.value > 1 and math.prod(mesh_lib.dcn_shape(config.mesh)) == 1:
    config.mesh.dcn_data = _SLICES.value  # the usual multislice layout: data parallelism across slices
    print(f"--slices={_SLICES.value}: mesh.dcn_data={_SLICES.value} (set --config.mesh.dcn_* to choose)", flush=True)
  try:
    if _SWEEP_MESH.value:
      print(f"{topology.name}: the meshes {_CONFIG.value.model.num_layers}-layer config allows, batch "
            f"{config.train.batch_size} x {config.data.seq_len}; FLOPs: plan one mesh without --sweep_mesh\n",
            flush=True)
      sys.exit(0 if sweep(config, devices, topology) else 1)
    plan = plan_lib.make_plan(config, devices, topology.generation.hbm_bytes, with_flops=_FLOPS.value,
                              quick=_QUICK.value)
  except ConfigError as e:
    print(f"CONFIG ERROR for {topology.name}: {e}", file=sys.stderr)
    sys.exit(2)
  print(describe(plan, config, topology, quick=_QUICK.value))
  print(verdict(plan, topology))
  sys.exit(0 if plan.fits else 1)


def run():
  common.run(sys.modules[__name__], main)


if __name__ == "__main__":
  run()
