"""The recipe of docs/data.md end to end on a small generated corpus: text tokenizer -> image tokenization by 2
processes x 4 fake devices (the same bytes as one process) -> document shards -> 10 training steps -> the decoded
batch (tools/show_batch.py) shows each caption beside its own image's codes."""
import itertools
import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pydoc_data.topics
from PIL import Image

from test_model import load_config
from test_tokenize import read_documents, tokenizer_dir  # noqa: F401  (a random 16px VQGAN, 4x4 codes of 32)
from unimodal_jax.data import pipeline, sources as data_sources
from unimodal_jax.data import tokenizer as tokenizer_lib
from unimodal_jax.data.vocab import from_config
from unimodal_jax.data import inputs
from unimodal_jax.ingest import build, encoders
from unimodal_jax.train import loop, metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_IMAGES, TEXT_SIZE = 24, 400
# short texts, so that every batch holds images too
TEXT_DOCS = [pydoc_data.topics.topics[k][:400] for k in sorted(pydoc_data.topics.topics)][:12]


def corpus(root):
  """images/i.png with distinct captions, and a JSONL of pairs and text documents, as a user would bring them."""
  rng = np.random.default_rng(0)
  (root / "images").mkdir()
  captions = [f"Photo number {i} of the set, {['red', 'green', 'blue'][i % 3]} tones." for i in range(NUM_IMAGES)]
  lines = []
  for i, caption in enumerate(captions):
    image = rng.integers(0, 256, (24, 32, 3), np.uint8)
    image[..., i % 3] = 255
    Image.fromarray(image).save(root / "images" / f"{i:02d}.png")
    lines.append({"text": caption, "image": f"images/{i:02d}.png"})
    if i % 2:
      lines.append({"segments": [{"text": TEXT_DOCS[i // 2]}]})
  (root / "corpus.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
  return captions


def tokenize_two_processes(root, tokenizer_dir):  # noqa: F811
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  procs = [subprocess.Popen(
      [sys.executable, "-m", "unimodal_jax.cli.tokenize", f"--jsonl={root / 'corpus.jsonl'}",
       f"--text_tokenizer={root / 'text_tok'}", f"--tokenizer={tokenizer_dir}", f"--out_dir={root / 'shards'}",
       "--shard_size=8", "--batch_size=8", "--distributed=explicit", f"--coordinator_address=127.0.0.1:{port}",
       "--num_processes=2", f"--process_id={i}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return json.loads(re.search(r'\{"shards".*\}', outs[0][0]).group())  # gloo prints to stdout too


def recipe_config(root, tokenizer_dir, num_steps):  # noqa: F811
  c = load_config("tiny")
  c.data.source, c.data.dir = "shards", str(root / "shards")
  c.vocab.text_size, c.model.vocab_size = TEXT_SIZE, TEXT_SIZE + 2 + 32
  c.vq.kind, c.vq.tokenizer_path, c.vq.image_size, c.vq.patch_size, c.vq.num_codes = "vqgan", tokenizer_dir, 16, 4, 32
  c.data.seq_len, c.train.num_steps, c.train.log_every = 64, num_steps, 5
  return c


def test_text_tokenizer_to_training_on_two_process_image_tokens(tmp_path, tokenizer_dir):  # noqa: F811
  captions = corpus(tmp_path)
  (tmp_path / "text.txt").write_text("\n".join(captions + [t.replace("\n", " ") for t in TEXT_DOCS]))
  made = subprocess.run([sys.executable, "-m", "unimodal_jax.cli.train_text_tokenizer", f"--input={tmp_path}/*.txt",
                         f"--vocab_size={TEXT_SIZE}", f"--out={tmp_path / 'text_tok'}"], capture_output=True,
                        text=True, timeout=300)
  assert made.returncode == 0, made.stderr[-2000:]

  totals = tokenize_two_processes(tmp_path, tokenizer_dir)
  assert totals["documents"] == NUM_IMAGES + NUM_IMAGES // 2 and totals["skipped"] == {}
  tok, plan = encoders.from_vqgan(str(tmp_path / "text_tok"), tokenizer_dir, batch_size=8,
                                  max_document_tokens=1 << 20, devices=jax.local_devices())
  build.write_documents(inputs.JsonlSource(str(tmp_path / "corpus.jsonl")), str(tmp_path / "one"), tok,
                        plan={"source": "JsonlSource", **plan}, shard_size=8, progress=False)
  names = sorted(os.listdir(tmp_path / "shards"))
  assert names == sorted(os.listdir(tmp_path / "one")) and sum(n.endswith(".array_record") for n in names) == 5
  for name in names:  # the output does not depend on how many processes made it
    assert (tmp_path / "shards" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name

  text_tok = tokenizer_lib.TextTokenizer.load(str(tmp_path / "text_tok"))
  codes_of = {text_tok.decode(d.segments[0]): d.segments[1] for d in read_documents(tmp_path / "shards")
              if d.kind == "image_text_pair"}
  assert sorted(codes_of) == sorted(captions)

  config = recipe_config(tmp_path, tokenizer_dir, 10)
  loop.train(config, str(tmp_path / "run"))
  rows = metrics_lib.read_metrics(str(tmp_path / "run" / metrics_lib.METRICS_FILE))
  assert [r["step"] for r in rows] == [5, 10] and all(np.isfinite(r["loss"]) for r in rows)
  assert rows[-1]["num_tokens/image"] > 0 and rows[-1]["num_tokens/text"] > 0

  vocab = from_config(config)
  batches = iter(pipeline.make_dataset(config, data_sources.shard_paths(config.data.dir, "data.dir")))
  grid, checked = 4, 0
  for batch, row in ((b, r) for b in itertools.islice(batches, 3) for r in range(b.shape[0])):
    for seg in range(1, batch.segment_ids[row].max() + 1):
      ids = batch.tokens[row][batch.segment_ids[row] == seg]
      starts = np.flatnonzero(ids == vocab.boi_id)
      if len(starts) != 1 or len(ids) < starts[0] + grid * grid + 2:
        continue  # a text document, or a piece of one
      image = slice(starts[0] + 1, starts[0] + 1 + grid * grid)
      assert ids[image.stop] == vocab.eoi_id
      text = np.concatenate([ids[:starts[0]], ids[image.stop + 1:]])
      caption = text_tok.decode(text[(text > 2)]).strip()
      np.testing.assert_array_equal(vocab.code_of(ids[image]).reshape(grid, grid), codes_of[caption], err_msg=caption)
      checked += 1
  assert checked >= 4

  shown = subprocess.run(
      [sys.executable, os.path.join(REPO, "tools", "show_batch.py"), "--config", os.path.join(REPO, "configs",
       "tiny.py"), "--config.data.source=shards", f"--config.data.dir={config.data.dir}",
       f"--config.vocab.text_size={TEXT_SIZE}", f"--config.model.vocab_size={config.model.vocab_size}",
       "--config.vq.kind=vqgan", f"--config.vq.tokenizer_path={tokenizer_dir}", "--config.vq.image_size=16",
       "--config.vq.patch_size=4", "--config.vq.num_codes=32", "--config.data.seq_len=64",
       f"--text_tokenizer={tmp_path / 'text_tok'}", f"--out={tmp_path / 'shown'}", "--rows=8"],
      capture_output=True, text=True, timeout=300, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert shown.returncode == 0, shown.stderr[-2000:]
  image_lines = [line for line in shown.stdout.splitlines() if "[image" in line]
  assert image_lines and any(c in line for line in image_lines for c in captions), shown.stdout[-2000:]
  assert any(name.endswith(".png") for name in os.listdir(tmp_path / "shown"))
