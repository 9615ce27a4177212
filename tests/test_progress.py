"""What the loop reports (train/progress.py): rates over loss tokens and row slots against the FLOPs formula, MFU's
peak from the chip table for the device kinds JAX reports, the ETA and the console lines."""
import pytest

from unimodal_jax.config import default_config
from unimodal_jax.model import flops
from unimodal_jax.parallel import chips
from unimodal_jax.train import progress


def test_rates_count_loss_tokens_and_row_slots_separately():
  c = default_config()
  per_token = flops.train_flops_per_token(c.model, c.data.seq_len)
  m = progress.throughput(3000.0, 4096.0, 2.0, c, num_devices=4, peak_tflops=100.0)
  assert m["tokens_per_sec"] == 1500.0 and m["slot_tokens_per_sec"] == 2048.0
  assert m["model_tflops_per_device"] == pytest.approx(1500.0 * per_token / 4 / 1e12, rel=1e-12)
  assert m["slot_model_tflops_per_device"] == pytest.approx(2048.0 * per_token / 4 / 1e12, rel=1e-12)
  assert m["mfu"] == pytest.approx(m["model_tflops_per_device"] / 100.0, rel=1e-12)
  assert m["slot_mfu"] / m["mfu"] == pytest.approx(4096.0 / 3000.0, rel=1e-12)


def test_no_mfu_without_a_known_peak():
  m = progress.throughput(3000.0, 4096.0, 2.0, default_config(), num_devices=1, peak_tflops=0.0)
  assert "mfu" not in m and "slot_mfu" not in m and m["tokens_per_sec"] == 1500.0


@pytest.mark.parametrize("device_kind, tflops", [("TPU v4", 275), ("TPU v5 lite", 197), ("TPU v5", 459),
                                                 ("TPU v6 lite", 918), ("cpu", 0), ("NVIDIA H100 80GB HBM3", 0)])
def test_peak_comes_from_the_chip_table_by_device_kind(device_kind, tflops):
  assert progress.peak_tflops_per_device(default_config(), device_kind) == tflops


def test_configured_peak_overrides_the_chip_table():
  c = default_config()
  c.train.peak_tflops_per_device = 123.0
  assert progress.peak_tflops_per_device(c, "TPU v5") == 123.0
  assert progress.peak_tflops_per_device(c, "cpu") == 123.0


def test_every_generation_is_found_by_the_device_kind_its_devices_report():
  """libtpu's AOT devices carry the device_kind a real TPU VM reports; the table must know each spelling."""
  pytest.importorskip("libtpu")
  from unimodal_jax.plan import topology
  for name, generation in topology.GENERATIONS.items():
    kind = topology.tpu_devices(f"{name}-8")[0].device_kind
    assert chips.chip_of_device_kind(kind) is generation.chip, (name, kind)


def test_eta_extrapolates_this_process_s_steps():
  assert progress.eta_seconds(done=30, start=10, num_steps=110, elapsed=40.0) == 160.0
  assert progress.eta_seconds(done=110, start=10, num_steps=110, elapsed=40.0) == 0.0


def test_step_line_shows_step_of_total_per_modality_loss_rates_and_eta():
  m = {"loss": 5.12345, "loss/text": 5.0, "loss/image": 5.5, "tokens_per_sec": 12345.6, "mfu": 0.4123,
       "step_time": 0.1234}
  line = progress.step_line(10, 300, m, eta_s=312.4)
  assert line == ("step 10/300: loss 5.1235 (text 5.0000, image 5.5000) | 12,346 tokens/s | MFU 41.2% | "
                  "0.123 s/step | ETA 0:05:12")
  del m["loss/image"], m["mfu"]
  assert progress.step_line(10, 300, m, eta_s=0).startswith("step 10/300: loss 5.1235 (text 5.0000) | 12,346")


def test_eval_and_compile_lines():
  m = {"eval/loss": 5.2, "eval/loss/text": 5.1, "eval/loss/image": 5.4, "eval/perplexity": 181.27}
  assert progress.eval_line(10, 300, m) == ("eval at step 10/300: loss 5.2000 (text 5.1000, image 5.4000), "
                                            "perplexity 181.3")
  assert progress.compile_line({"train": 2.314, "eval": 0.5}) == ("compiled the train step in 2.31 s, the eval step "
                                                                  "in 0.50 s")
