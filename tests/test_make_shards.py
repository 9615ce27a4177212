"""`unimodal-make-shards`: JSONL documents and image-caption folders become shards whose records hold the text
tokenizer's ids and the image tokenizer's codes (`vq/codes.py`), and the pipeline reads them; a folder with an
unreadable picture stops naming it and leaves nothing to train on, or is skipped by name (--on_bad_record=skip)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
from PIL import Image

from unimodal_jax import config as config_lib
from unimodal_jax.data import documents
from unimodal_jax.data import pipeline
from unimodal_jax.data import sources as data_sources
from unimodal_jax.ingest import build, encoders, sources
from unimodal_jax.data import tokenizer as tokenizer_lib
from unimodal_jax.vq import codes
from unimodal_jax.vq import images as images_lib
from unimodal_jax.vq import kmeans

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CAPTIONS = {"astronaut": "An astronaut.", "coffee": "A cup of coffee.", "chelsea": "A ginger cat."}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """Config, text tokenizer path, a folder of captioned images and a JSONL file referring to them."""
  root = tmp_path_factory.mktemp("make_shards")
  c = config_lib.default_config()
  c.vocab.text_size, c.vq.image_size, c.vq.patch_size, c.vq.num_codes = 300, 16, 8, 8
  c.data.source, c.data.dir, c.data.seq_len, c.train.batch_size = "shards", str(root / "out"), 64, 2
  text_tok = tokenizer_lib.TextTokenizer.train(list(CAPTIONS.values()) * 20, 300)
  c.vq.tokenizer_path = str(root / "codebook.npz")
  folder = root / "photos"
  folder.mkdir()
  pixels = []
  for name, caption in CAPTIONS.items():
    Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}.png")
    (folder / f"{name}.txt").write_text(caption + "\n")
    pixels.append(load_image(str(folder / f"{name}.png")))
  kmeans.KMeansTokenizer.fit(np.stack(pixels), 8, 8, seed=0).save(c.vq.tokenizer_path)
  text_tok.save(str(root / "tokenizer.json"))
  lines = [{"text": CAPTIONS["coffee"], "image": "photos/coffee.png"},
           {"segments": [{"text": "Two pictures:"}, {"image": "photos/astronaut.png"}, {"text": "and"},
                         {"image": str(folder / "chelsea.png")}]},
           {"segments": [{"text": "Only text."}]}]
  (root / "docs.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
  return c, str(root / "tokenizer.json"), str(folder), str(root / "docs.jsonl"), text_tok


def load_image(path):
  return images_lib.prepare(open(path, "rb").read(), 16)[0]


def read_all(paths):
  import grain
  return [documents.decode_document(r) for p in paths for r in grain.sources.ArrayRecordDataSource([p])]


def make_shards(config, tok_path, source, out_dir, shard_size=2, **kwargs):
  tok, plan = encoders.from_config(config, tok_path, min_size=1)
  build.write_documents(source, out_dir, tok, plan=plan, shard_size=shard_size, progress=False, **kwargs)
  return data_sources.shard_paths(out_dir, "data.dir")


def test_jsonl_documents_hold_the_tokenizers_ids(setup, tmp_path):
  c, tok_path, folder, jsonl, text_tok = setup
  paths = make_shards(c, tok_path, sources.JsonlSource(jsonl), str(tmp_path))
  docs = read_all(paths)
  assert sorted(d.kind for d in docs) == ["image_text_pair", "interleaved", "text"]
  encode = codes.image_tokenizer(c)
  image = lambda name: encode(load_image(os.path.join(folder, f"{name}.png"))[None])[0]  # noqa
  pair = next(d for d in docs if d.kind == "image_text_pair")
  assert text_tok.decode(pair.segments[0]) == CAPTIONS["coffee"]
  np.testing.assert_array_equal(pair.segments[1], image("coffee"))
  inter = next(d for d in docs if d.kind == "interleaved")
  assert [text_tok.decode(s) for s in inter.segments[0::2]] == ["Two pictures:", "and"]
  np.testing.assert_array_equal(inter.segments[1], image("astronaut"))
  np.testing.assert_array_equal(inter.segments[3], image("chelsea"))
  batch = next(iter(pipeline.make_dataset(c, paths)))
  assert batch.shape == (2, 64) and batch.num_tokens() > 0


def test_the_cli_converts_an_image_caption_folder_and_prints_a_summary(setup, tmp_path):
  c, tok_path, folder, _, text_tok = setup
  out = str(tmp_path / "out")
  cmd = [sys.executable, "-c", "from unimodal_jax.cli.make_shards import run; run()",
         "--config", os.path.join(REPO, "configs", "tiny.py"),
         "--config.vocab.text_size=300", "--config.vq.image_size=16", "--config.vq.patch_size=8",
         "--config.vq.num_codes=8", f"--config.vq.tokenizer_path={c.vq.tokenizer_path}",
         f"--text_tokenizer={tok_path}", f"--image_folder={folder}", f"--out_dir={out}", "--num_shards=1"]
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "wrote 1 shards" in result.stdout and "3 documents from 3 inputs; skipped none" in result.stdout
  docs = read_all([os.path.join(out, "train-00000-of-00001.array_record")])
  assert [text_tok.decode(d.segments[0]) for d in docs] == [CAPTIONS[n] for n in sorted(CAPTIONS)]


def test_a_codebook_that_does_not_match_config_vq_is_named(setup):
  c = setup[0].copy_and_resolve_references()
  c.vq.num_codes = 16
  with pytest.raises(ValueError, match=r"config.vq.tokenizer_path=.*codebook.npz: a codebook for"):
    codes.image_tokenizer(c)


def test_a_jsonl_image_that_cannot_be_read_names_the_line(setup, tmp_path):
  c, tok_path, *_ = setup
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"text": "x", "image": "missing.png"}) + "\n")
  with pytest.raises(ValueError, match=f"input 0: {bad}:1: cannot read image"):
    make_shards(c, tok_path, sources.JsonlSource(str(bad)), str(tmp_path / "o"))


def cli(setup, folder, out, *extra):
  c, tok_path, *_ = setup
  cmd = [sys.executable, "-c", "from unimodal_jax.cli.make_shards import run; run()",
         "--config", os.path.join(REPO, "configs", "tiny.py"), "--config.vocab.text_size=300",
         "--config.vq.image_size=16", "--config.vq.patch_size=8", "--config.vq.num_codes=8",
         f"--config.vq.tokenizer_path={c.vq.tokenizer_path}", f"--text_tokenizer={tok_path}",
         f"--image_folder={folder}", f"--out_dir={out}", "--num_shards=3", *extra]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_a_folder_with_an_unreadable_picture_as_a_new_user_meets_it(setup, tmp_path):
  """raise: one line naming the file, and no directory training would take; skip: the file named in the log and
  counted in the summary; the rerun resumes the half-written directory."""
  folder = tmp_path / "photos"
  shutil.copytree(setup[2], folder)
  (folder / "coffee.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # the last of three in sorted order
  out = tmp_path / "out"
  result = cli(setup, folder, out)
  assert result.returncode != 0 and "coffee.png: not_an_image:" in result.stderr, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert sorted(p.name for p in out.glob("*.array_record")) == [f"train-0000{k}-of-00003.array_record" for k in (0, 1)]
  with pytest.raises(ValueError, match="has not finished"):
    data_sources.shard_paths(str(out), "data.dir")
  result = cli(setup, folder, out, "--on_bad_record=skip")
  assert result.returncode == 0, result.stderr[-2000:]
  assert "skipped" in result.stderr and "coffee.png" in result.stderr
  assert "2 documents from 3 inputs; skipped {'not_an_image': 1}" in result.stdout
  assert len(read_all(data_sources.shard_paths(str(out), "data.dir"))) == 2
