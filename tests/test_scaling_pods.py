"""`unimodal-sweep launch --backend tpu_vm|xpk --dry_run`: one launch per run (its own queued resource or workload),
every run's unimodal-train arguments as the plan gives them, branches marked with the gs:// checkpoint they wait for.
Run state is stubbed (no bucket is reachable here); the commands are compared with ones written out by hand."""
import os
import shlex

import pytest

from unimodal_jax.cli import sweep as cli
from unimodal_jax.scaling import launch, plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POD = ("--project", "my-proj", "--zone", "us-east5-a", "--accelerator_type", "v5p-8", "--dry_run")


@pytest.fixture
def pod_spec(tmp_path, monkeypatch):
  """The tiny spec at one size and two budgets, its data in a bucket; every run ready unless it branches."""
  path = tmp_path / "pod_spec.py"
  path.write_text(f"""
import importlib.util
s = importlib.util.spec_from_file_location("tiny", {os.path.join(ROOT, "configs", "sweeps", "tiny.py")!r})
tiny = importlib.util.module_from_spec(s)
s.loader.exec_module(tiny)
def get_config():
  c = tiny.get_config()
  c.base_config = {os.path.join(ROOT, "configs", "tiny.py")!r}
  c.sizes, c.budgets = (0,), (0.25, 0.5)
  c.overrides = c.overrides + ("data.dir=gs://b/data",)
  return c
""")
  monkeypatch.chdir(ROOT)  # the hosts find the base config under configs/, relative to the repository root
  monkeypatch.setattr(launch, "run_state", lambda run, sweep_dir, retries=1: launch.RunState(
      run.name, "waiting" if run.depends_on else "ready", 0, run.num_steps, 0))
  runs = plan.plan(plan.load_spec(str(path)))
  return str(path), {r.name: " ".join(r.train_args("configs/tiny.py", "gs://b/sw")) + " --distributed=auto"
                     for r in runs}


def dry_run(capsys, *argv):
  assert cli.main(["launch", *argv]) == 0
  return capsys.readouterr().out.strip().splitlines()


def test_xpk_dry_run_submits_one_workload_per_run(pod_spec, capsys):
  spec, train = pod_spec
  lines = dry_run(capsys, "--spec", spec, "--sweep_dir", "gs://b/sw/", "--backend", "xpk", "--cluster", "c1",
                  "--workload", "sw", "--docker_image", "gcr.io/my-proj/u:1", *POD)

  def workload(run, suffix):
    return shlex.join(["xpk", "workload", "create", "--cluster=c1", f"--workload=sw-{suffix}", "--tpu-type=v5p-8",
                       "--num-slices=1", "--docker-image=gcr.io/my-proj/u:1",
                       f"--command=env JAX_PLATFORMS=tpu,cpu bash launch/pod_train.sh {train[run]}",
                       "--priority=medium", "--max-restarts=10", "--project=my-proj", "--zone=us-east5-a"])
  assert lines == [workload("dense_s0_r0.5", "dense-s0-r0-5"),
                   "# dense_s0_r0.25: waits for gs://b/sw/runs/dense_s0_r0.5/checkpoints/4",
                   workload("dense_s0_r0.25", "dense-s0-r0-25")]
  assert "--config.train.branch_from=gs://b/sw/runs/dense_s0_r0.5/checkpoints/4" in train["dense_s0_r0.25"]


def test_tpu_vm_dry_run_creates_sets_up_and_trains_one_slice_per_run(pod_spec, capsys):
  spec, train = pod_spec
  lines = dry_run(capsys, "--spec", spec, "--sweep_dir", "gs://b/sw", "--backend", "tpu_vm", "--name", "sw",
                  "--package", "unimodal_jax[tpu]", *POD)
  assert len(lines) == 2 * 5 + 1
  assert lines[5] == "# dense_s0_r0.25: waits for gs://b/sw/runs/dense_s0_r0.5/checkpoints/4"
  for block, (run, node) in zip((lines[:5], lines[6:]), (("dense_s0_r0.5", "sw-dense-s0-r0-5"),
                                                         ("dense_s0_r0.25", "sw-dense-s0-r0-25"))):
    where = "--project=my-proj --zone=us-east5-a"
    assert block[0] == (f"gcloud compute tpus queued-resources create {node} {where} --accelerator-type=v5p-8 "
                        f"--runtime-version=v2-alpha-tpuv5 --node-id={node}")
    assert block[2] == f"gcloud compute tpus tpu-vm scp --recurse configs {node}: {where} --worker=all"
    assert block[4] == shlex.join(
        ["gcloud", "compute", "tpus", "tpu-vm", "ssh", node, "--project=my-proj", "--zone=us-east5-a", "--worker=all",
         f"--command=cd ~ && {{ setsid nohup env JAX_PLATFORMS=tpu,cpu unimodal-venv/bin/unimodal-train {train[run]} "
         f">> unimodal-train.log 2>&1 < /dev/null & echo $! > unimodal-train.pid; }}"])


def test_pod_backends_need_a_bucket_sweep_dir_and_name_the_flag(pod_spec, capsys):
  spec, _ = pod_spec
  assert cli.main(["launch", "--spec", spec, "--sweep_dir", "/tmp/sw", "--backend", "xpk", *POD]) == 2
  assert "--sweep_dir='/tmp/sw': pod runs write where" in capsys.readouterr().err
  assert cli.main(["launch", "--spec", spec, "--sweep_dir", "gs://b/sw", "--backend", "xpk", "--cluster", "c1",
                   "--workload", "sw", *POD]) == 2
  assert "--docker_image=''" in capsys.readouterr().err
