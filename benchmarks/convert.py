"""Time and peak RSS of `unimodal-convert` to-hf and from-hf (or, with --mot, to-torch and from-torch) for a
~1.1B-parameter random model.

  python benchmarks/convert.py --workdir /tmp/convert_bench [--mot | --vq]

Chameleon's vocabulary (65,536 ids), 16 layers of width 2048; --mot: a Mixture-of-Transformers with 8 such layers,
every group untied (text and image experts); --vq: to-hf also carries a random tokenizer of Chameleon's size
(configs/vq_chameleon.py, 68.7M parameters) and from-hf writes it back. Writes a random checkpoint step in a run's
layout (params only), runs both commands in fresh processes and prints a markdown table (results: docs/convert.md).
The peak RSS is each command's own (VmHWM), whatever this script holds.
"""
import argparse
import os
import platform
import re
import subprocess
import sys
import time

import jax
import numpy as np

from unimodal_jax.config import load_config_file
from unimodal_jax.convert import checkpoint
from unimodal_jax.model.transformer import Transformer
from unimodal_jax.train import state as state_lib
from unimodal_jax.vq import vqgan
from unimodal_jax.vq import weights as vq_weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "chameleon_7b.py")
MODEL = {"num_layers": 16, "embed_dim": 2048, "num_heads": 16, "num_kv_heads": 16, "head_dim": 128, "mlp_dim": 5632,
         "dtype": "float32"}
MOT_CONFIG = os.path.join(REPO, "configs", "mot_chameleon_7b.py")
MOT_MODEL = {**MODEL, "num_layers": 8}  # two experts per layer: about the dense model's parameter count


def write_random_checkpoint(step_dir: str, config_file: str, model: dict) -> int:
  """A step directory whose state/ holds random float32 params of the benchmark model; returns their count."""
  config = load_config_file(config_file)
  config.model.update(model)
  model = Transformer(config.model)
  shapes = jax.eval_shape(lambda: state_lib.init_params(model, jax.random.key(0), 8))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape, dtype=np.float32), shapes)
  checkpoint.write_params(params, step_dir)  # the params item of a run's step; read_params reads nothing else
  return sum(x.size for x in jax.tree.leaves(params))


def write_random_tokenizer(out_dir: str) -> int:
  """Our tokenizer directory with random float32 weights of configs/vq_chameleon.py's VQGAN; returns their count."""
  config = load_config_file(os.path.join(REPO, "configs", "vq_chameleon.py")).vqgan
  shapes = jax.eval_shape(lambda: vqgan.init_params(config, jax.random.key(0)))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape, dtype=np.float32), shapes)
  vq_weights.save_tokenizer(params, config, out_dir)
  return sum(x.size for x in jax.tree.leaves(params))


def run(command: list[str]) -> dict:
  start = time.perf_counter()
  out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
  if out.returncode:
    sys.exit(f"{' '.join(command)} failed:\n{out.stderr[-3000:]}")
  seconds, rss = re.search(r": ([\d.]+) s, peak RSS (\d+) MiB", out.stdout).groups()
  check = re.search(r"self-check .* error vs \S+ (\S+)", out.stdout)
  return {"convert_s": float(seconds), "process_s": time.perf_counter() - start, "peak_rss_mib": int(rss),
          "self_check": check.group(1) if check else "-"}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--self_check", action="store_true", help="also compare logits with the PyTorch side")
  parser.add_argument("--mot", action="store_true", help="a Mixture-of-Transformers: to-torch and from-torch")
  parser.add_argument("--vq", action="store_true", help="to-hf/from-hf with a Chameleon-sized VQ tokenizer")
  args = parser.parse_args()
  if args.mot and args.vq:
    parser.error("--vq applies to to-hf/from-hf, not to --mot")
  config_file, model, fmt = (MOT_CONFIG, MOT_MODEL, "torch") if args.mot else (CONFIG, MODEL, "hf")
  step_dir, out_dir, init_dir = (os.path.join(args.workdir, d) for d in ("checkpoints/0", fmt, "imported"))
  count = write_random_checkpoint(step_dir, config_file, model)
  cli = [sys.executable, "-m", "unimodal_jax.cli.convert"]
  model_flags = [f"--config={config_file}"] + [f"--config.model.{k}={v}" for k, v in model.items()]
  check = ["--self_check"] if args.self_check else []
  to_vq, from_vq = [], []
  if args.vq:
    vq_count = write_random_tokenizer(os.path.join(args.workdir, "tokenizer"))
    print(f"VQ tokenizer: {vq_count / 1e6:.1f}M params")
    to_vq = ["--vq_tokenizer", os.path.join(args.workdir, "tokenizer")]
    from_vq = ["--vq_out", os.path.join(args.workdir, "imported_tokenizer")]
  rows = {f"to-{fmt} --max_shard_gb={gb}": run(cli + [f"to-{fmt}", "--checkpoint", step_dir, "--out_dir",
                                                      f"{out_dir}_{gb}", f"--max_shard_gb={gb}"]
                                                + model_flags + check + to_vq)
          for gb in (2, 0.5)}
  rows[f"from-{fmt}"] = run(cli + [f"from-{fmt}", f"--{fmt}_dir", f"{out_dir}_2", "--out_dir", init_dir] + model_flags
                            + check + from_vq)
  print(f"{count / 1e9:.2f}B params ({4 * count / 2**30:.1f} GiB float32); {platform.node()}, {os.cpu_count()} CPUs")
  print("| command | conversion (s) | process incl. imports and self-check (s) | peak RSS (MiB) | self-check error |")
  print("|---|---|---|---|---|")
  for name, r in rows.items():
    print(f"| {name} | {r['convert_s']:.1f} | {r['process_s']:.1f} | {r['peak_rss_mib']} | {r['self_check']} |")


if __name__ == "__main__":
  main()
