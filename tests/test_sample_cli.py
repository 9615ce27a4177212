"""Sampling the way a user meets it: `unimodal-train` on the demo data writes periodic samples (PNG grid, texts,
TensorBoard), then `unimodal-sample` turns the run's checkpoint into images of the configured size, on one device
although the run's config asks for all of them."""
import os
import struct
import subprocess
import sys

import numpy as np
from PIL import Image
from tensorboardX.proto import event_pb2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "A black and white checkerboard."
# The demo's data and VQGAN (64 px images, 8x8 codes), a smaller transformer, two steps.
TRAIN_FLAGS = ["--config.model.num_layers=1", "--config.model.embed_dim=64", "--config.model.num_heads=2",
               "--config.model.num_kv_heads=2", "--config.model.head_dim=32", "--config.model.mlp_dim=128",
               "--config.train.num_steps=2", "--config.optim.warmup_steps=1", "--config.train.log_every=1",
               "--config.train.checkpoint_every=2",
               "--config.sample.every=2", "--config.sample.num_samples=2", f"--config.sample.prompts=('{PROMPT}',)"]


def command(name, *args):
  return [os.path.join(os.path.dirname(sys.executable), name), *args]


def run(cmd):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device, as a user's machine
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


def tensorboard_tags(directory) -> set[str]:
  """Every summary tag in the TFRecord event files of `directory`."""
  tags = set()
  for name in os.listdir(directory):
    with open(os.path.join(directory, name), "rb") as f:
      data = f.read()
    at = 0
    while at < len(data):
      (length,) = struct.unpack("<Q", data[at:at + 8])
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
      tags |= {v.tag for v in event.summary.value}
      at += 16 + length
  return tags


def test_demo_run_samples_during_training_and_through_the_cli(tmp_path):
  workdir, out_dir = tmp_path / "run", tmp_path / "samples"
  run(command("unimodal-train", f"--config={REPO}/configs/demo.py", f"--workdir={workdir}", *TRAIN_FLAGS))
  grid = np.asarray(Image.open(workdir / "samples" / "step_2.png"))
  assert grid.shape == (64, 2 * 64 + 2, 3)  # two samples of the prompt side by side, 2 px apart
  assert (workdir / "samples" / "step_2.txt").read_text().count(f"[{PROMPT}] <image>") == 2
  # tensorboardX files a text summary under "<tag>/text_summary"
  assert {"samples/images", "samples/text/text_summary"} <= tensorboard_tags(workdir / "tensorboard")
  # the samples and the metrics in two event files: opened in the same second they shared one and corrupted it
  names = os.listdir(workdir / "tensorboard")
  assert len(names) == 2 and sum(n.endswith(".samples") for n in names) == 1, names

  stdout = run(command("unimodal-sample", f"--workdir={workdir}", f"--prompt={PROMPT}", "--mode=image", "--cfg=3.0",
                       "--num_samples=3", "--seed=0", f"--out_dir={out_dir}"))
  for i in range(3):
    assert Image.open(out_dir / f"image_{i}_0.png").size == (64, 64)
  assert str(out_dir / "images.png") in stdout
  tokens = np.load(out_dir / "tokens.npy")
  assert tokens.shape == (3, 65)  # 8 x 8 codes and <eoi>
  assert len((out_dir / "samples.txt").read_text().splitlines()) == 3
