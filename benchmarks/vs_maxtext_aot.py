"""Per-chip HBM and compiled FLOPs per step of the llama2-7B train step on a TPU slice, ahead of time: MaxText 0.2.4's
own `train_compile` against our `unimodal-plan`, both run from one venv (the same jax, libtpu and XLA), same global
batch, seq 4096, remat full, FSDP over every chip, splash attention.

Ours is configs/chameleon_7b.py made into llama2-7B: no QK-norm, no dropout, llama2's 32,000-id vocabulary
(untied, like Chameleon), full remat, splash. MaxText is its `model_name=llama2-7b`. Both: bf16 compute, float32
params and AdamW state, z-loss 1e-5, Adam eps 1e-5, packed inputs with segment ids.

- HBM per chip: each side's `memory_analysis()` of the full-depth step, read as the planner reads it: arguments +
  outputs - aliased + temporaries + generated code.
- FLOPs per step: XLA's cost analysis counts a scanned layer stack once. Ours: unimodal-plan's scan correction
  (plan/planner.flops_per_chip). MaxText: two unrolled compiles (scan_layers=false) at 2 and 3 layers,
  F(L) = F(2) + (L - 2) (F(3) - F(2)). Splash kernels are opaque to XLA on both sides: the XLA column leaves them
  out, the total adds the same analytical count (planner.kernel_flops_per_chip) to both.
- MaxText also at full depth with its vocabulary tiling (as many positions per tile as our loss chunk), with the
  head gathered per tile (its default) and once (`vocab_tiling_ag_once=true`, as ours): HBM only, since XLA counts
  the tile loop once.

MaxText 0.2.4 declares Python >= 3.12 and pins jax/jaxlib >= 0.10.2, libtpu >= 0.0.42.1, the versions of this
repository's `tpu` extra. Either a Python 3.12 venv (`pip install "maxtext[tpu]==0.2.4"`, then `pip install -e .`),
or, as recorded in docs/benchmarks.md, this repository's own venv (Python 3.11) with MaxText's source on PYTHONPATH:
the PyPI wheel unzipped (`pip download --no-deps --only-binary=:all: --python-version 3.12 maxtext==0.2.4`, the
source of tag maxtext-v0.2.4) with the two PEP 695 `type X = ...` aliases in maxtext/kernels/mhc/{common,api}.py
(unused by llama2) rewritten as plain assignments, and its missing pure-Python dependencies installed with
`pip install --no-deps --target <site>` (omegaconf, antlr4-python3-runtime==4.9.3, jaxtyping, wadler_lindig, chex,
aqtp, qwix, tokamax, drjax, einshape, toolz, typeguard==2.13.3, pathwaysutils, fastapi, starlette, uvicorn,
tiktoken, sentencepiece). From the repository root:
  DECOUPLE_GCLOUD=TRUE TPU_SKIP_MDS_QUERY=1 PYTHONPATH=<maxtext>/src:<site> \
    nice -n 10 python benchmarks/vs_maxtext_aot.py [--topology v5p-256] [--per_device_batch 16]
Each compile takes minutes on a small host.
"""
import argparse
import importlib.util
import os
import re
import subprocess
import sys
import time

import maxtext

from unimodal_jax.plan import planner, topology as topology_lib

CONFIG = "configs/chameleon_7b.py"
LLAMA2_VOCAB = 32000
# configs/chameleon_7b.py -> llama2-7B: its text ids shrink so that text + <boi>/<eoi> + 8192 codes = 32,000
OVERRIDES = {
    "model": dict(qk_norm="none", dropout_rate=0.0, vocab_size=LLAMA2_VOCAB, remat_policy="full", attention="splash",
                  z_loss=1e-5),
    "vocab": dict(text_size=LLAMA2_VOCAB - 8192 - 2),
    "mesh": dict(data=1, fsdp=-1, tensor=1),
    "optim": dict(eps=1e-5),
}


def bin_path(name: str) -> str:
  return os.path.join(os.path.dirname(sys.executable), name)


def run(argv: list[str]) -> tuple[str, float]:
  t0 = time.perf_counter()
  out = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  if out.returncode not in (0, 1):  # unimodal-plan exits 1 when the plan does not fit: still a result
    sys.exit(f"{argv[:3]} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
  return out.stdout + out.stderr, time.perf_counter() - t0


def maxtext_compile(topology: str, per_device_batch: int, layers: int, scan: bool, workdir: str,
                    extra: tuple[str, ...] = ()) -> dict:
  """MaxText's own AOT compile of its train step; returns its memory stats and XLA flops (per chip)."""
  base = os.path.join(os.path.dirname(maxtext.__file__), "configs", "base.yml")
  argv = [sys.executable, "-m", "maxtext.trainers.pre_train.train_compile", base, f"compile_topology={topology}",
          "compile_topology_num_slices=1", "model_name=llama2-7b", "override_model_config=true",
          f"base_num_decoder_layers={layers}", f"scan_layers={str(scan).lower()}",
          f"per_device_batch_size={per_device_batch}", "max_target_length=4096", "remat_policy=full",
          "attention=flash", "ici_fsdp_parallelism=-1", "dataset_type=synthetic", "z_loss_multiplier=1e-5",
          "adam_eps=1e-5", "run_name=aot", f"base_output_directory={workdir}", "enable_checkpointing=false",
          *extra]
  text, seconds = run(argv)
  memory = re.search(r"Memory analysis: CompiledMemoryStats\((.*?)\)", text)
  flops = re.search(r"'flops': ([0-9.e+]+)", text)
  if not (memory and flops):
    sys.exit(f"train_compile printed no memory or cost analysis:\n{text[-3000:]}")
  stats = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", memory.group(1))}
  return dict(stats=stats, flops=float(flops.group(1)), seconds=seconds)


def peak(stats: dict) -> int:
  return (stats["argument_size_in_bytes"] + stats["output_size_in_bytes"] - stats["alias_size_in_bytes"]
          + stats["temp_size_in_bytes"] + stats["generated_code_size_in_bytes"])


def parse_size(text: str) -> float:
  value, unit = text.split()
  return float(value) * (2**30 if unit == "GiB" else 2**20)


def ours(topology: str, batch: int) -> dict:
  """unimodal-plan on the llama2-7B variant of configs/chameleon_7b.py: memory lines and total FLOPs per step."""
  argv = [bin_path("unimodal-plan"), f"--config={CONFIG}", f"--topology={topology}",
          f"--config.train.batch_size={batch}",
          *(f"--config.{section}.{k}={v}" for section, values in OVERRIDES.items() for k, v in values.items())]
  text, seconds = run(argv)
  lines = {m.group(1): parse_size(m.group(2)) for m in
           re.finditer(r"^\s+(arguments|outputs|aliased|temporaries|generated code|peak estimate)\s+"
                       r"([0-9.]+ [GM]iB)", text, re.M)}
  flops = re.search(r"FLOPs per step: ([0-9.e+]+) as compiled", text)
  if "peak estimate" not in lines or not flops:
    sys.exit(f"unimodal-plan printed no plan:\n{text[-3000:]}")
  return dict(lines=lines, flops=float(flops.group(1)), seconds=seconds, text=text)


def our_config(batch: int):
  """The config unimodal-plan compiles (for the analytical kernel count, which needs no compile)."""
  spec = importlib.util.spec_from_file_location("chameleon_7b", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for section, values in OVERRIDES.items():
    config[section].update(values)
  config.train.batch_size = batch
  return config


def gib(n: float) -> str:
  return f"{n / 2**30:.2f} GiB"


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--topology", default="v5p-256")
  parser.add_argument("--per_device_batch", type=int, default=16, help="rows per chip (MaxText's unit)")
  parser.add_argument("--workdir", default="/tmp/vs_maxtext_aot")
  args = parser.parse_args()
  topo = topology_lib.parse(args.topology)
  chips, layers = topo.chips, 32
  batch = args.per_device_batch * chips
  kernels = planner.kernel_flops_per_chip(our_config(batch), topology_lib.tpu_devices(args.topology)) * chips
  print(f"{args.topology}: {chips} chips; llama2-7B, batch {batch} x 4096, remat full, FSDP {chips}, splash; "
        f"maxtext {getattr(maxtext, '__version__', '0.2.4')}; splash kernels (analytical, both): {kernels:.4e} "
        f"FLOPs/step\n", flush=True)

  mt_full = maxtext_compile(args.topology, args.per_device_batch, layers, True, args.workdir)
  print(f"MaxText full depth: {gib(peak(mt_full['stats']))} per chip ({mt_full['seconds']:.0f} s)", flush=True)
  tiles = 4096 // our_config(batch).model.loss_chunk_size  # as many positions per tile as our loss chunk
  # with tiling, MaxText gathers the head for each tile by default; ours gathers it once before the chunk loop
  tiled = {f"`num_vocab_tiling={tiles}`{flag}": maxtext_compile(args.topology, args.per_device_batch, layers, True,
                                                                args.workdir, (f"num_vocab_tiling={tiles}", *extra))
           for flag, extra in (("", ()), (", `vocab_tiling_ag_once=true`", ("vocab_tiling_ag_once=true",)))}
  for name, r in tiled.items():
    print(f"MaxText full depth, {name}: {gib(peak(r['stats']))} per chip ({r['seconds']:.0f} s)", flush=True)
  mt_2, mt_3 = (maxtext_compile(args.topology, args.per_device_batch, n, False, args.workdir) for n in (2, 3))
  mt_xla = chips * (mt_2["flops"] + (layers - 2) * (mt_3["flops"] - mt_2["flops"]))
  print(f"MaxText unrolled 2/3 layers: {mt_2['flops']:.4e} / {mt_3['flops']:.4e} per chip "
        f"({mt_2['seconds']:.0f} + {mt_3['seconds']:.0f} s)", flush=True)
  us = ours(args.topology, batch)
  print(us["text"], flush=True)
  us_xla = us["flops"] - kernels

  s = mt_full["stats"]
  mt_lines = {"arguments": s["argument_size_in_bytes"], "temporaries": s["temp_size_in_bytes"],
              "peak estimate": peak(s)}
  print("| | HBM / chip (peak estimate) | arguments | temporaries | XLA FLOPs / step | + splash kernels | "
        "compile (s) |")
  print("|---|---|---|---|---|---|---|")
  print(f"| MaxText 0.2.4 `train_compile` | {gib(mt_lines['peak estimate'])} | {gib(mt_lines['arguments'])} | "
        f"{gib(mt_lines['temporaries'])} | {mt_xla:.4e} | {mt_xla + kernels:.4e} | "
        f"{mt_full['seconds'] + mt_2['seconds'] + mt_3['seconds']:.0f} |")
  for name, r in tiled.items():
    t = r["stats"]
    print(f"| MaxText 0.2.4, {name} | {gib(peak(t))} | {gib(t['argument_size_in_bytes'])} | "
          f"{gib(t['temp_size_in_bytes'])} | (tile loop counted once) | | {r['seconds']:.0f} |")
  print(f"| ours `unimodal-plan` | {gib(us['lines']['peak estimate'])} | {gib(us['lines']['arguments'])} | "
        f"{gib(us['lines']['temporaries'])} | {us_xla:.4e} | {us['flops']:.4e} | {us['seconds']:.0f} |")
  print(f"| ours / MaxText | {us['lines']['peak estimate'] / mt_lines['peak estimate']:.3f} | "
        f"{us['lines']['arguments'] / mt_lines['arguments']:.3f} | "
        f"{us['lines']['temporaries'] / mt_lines['temporaries']:.3f} | {us_xla / mt_xla:.4f} | "
        f"{us['flops'] / (mt_xla + kernels):.4f} | |")


if __name__ == "__main__":
  main()
