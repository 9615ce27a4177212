"""The pod launchers: `--dry_run` through the console scripts prints exactly the gcloud / xpk commands (one slice and
two), bad flags are usage errors naming the flag, and the shell each worker or pod runs behaves (run by bash here, with
a stand-in unimodal-train that saves on SIGTERM as the real one does)."""
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from unimodal_jax.launch import common, tpu_vm, xpk

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEEL = "unimodal_jax-0.1.0-py3-none-any.whl"
WHERE = ["--project=my-proj", "--zone=us-east5-a"]
TRAIN = ["--", "--config=configs/chameleon_7b.py", "--workdir=gs://bkt/runs/c7b"]
TPU = ["--name=c7b", *WHERE, "--accelerator_type=v5p-256"]
XPK = ["--cluster=tpu", "--workload=c7b", *WHERE, "--tpu_type=v5p-256", "--docker_image=gcr.io/my-proj/unimodal:v1"]
WAIT = ("while :; do state=$(gcloud compute tpus queued-resources describe c7b --project=my-proj --zone=us-east5-a "
        "--format=\"value(state.state)\") || exit 1; echo \"queued resource c7b: $state\"; case \"$state\" in "
        "ACTIVE) exit 0;; FAILED|SUSPENDED) exit 1;; esac; sleep 30; done")
INSTALL = ("set -e; [ -x ~/.local/bin/uv ] || curl -LsSf https://astral.sh/uv/install.sh | sh; "
           "[ -x unimodal-venv/bin/python ] || ~/.local/bin/uv venv --seed --python 3.12 unimodal-venv; ")
RUN = ("env JAX_PLATFORMS=tpu,cpu unimodal-venv/bin/unimodal-train --config=configs/chameleon_7b.py "
       "--workdir=gs://bkt/runs/c7b --distributed=auto")


def command(name: str) -> list[str]:
  """The installed console script, else its module (a checkout without `pip install -e .`)."""
  found = shutil.which(name, path=os.path.dirname(sys.executable))
  module = {"unimodal-launch-tpu-vm": "launch_tpu_vm", "unimodal-launch-xpk": "launch_xpk"}[name]
  return [found] if found else [sys.executable, "-m", f"unimodal_jax.cli.{module}"]


def launch(name: str, *args: str, cwd: str = REPO) -> subprocess.CompletedProcess:
  return subprocess.run([*command(name), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def dry_run(name: str, *args: str, cwd: str = REPO) -> list[list[str]]:
  out = launch(name, "--dry_run", *args, cwd=cwd)
  assert out.returncode == 0, out.stderr
  return [shlex.split(line) for line in out.stdout.splitlines()]


@pytest.fixture
def wheel(tmp_path):
  path = tmp_path / WHEEL
  path.write_bytes(b"")
  return str(path)


def test_tpu_vm_one_slice_up_prints_the_gcloud_commands(wheel):
  ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "c7b", *WHERE, "--worker=all"]
  assert dry_run("unimodal-launch-tpu-vm", "up", *TPU, "--provisioning=spot", f"--wheel={wheel}", *TRAIN) == [
      ["gcloud", "compute", "tpus", "queued-resources", "create", "c7b", *WHERE, "--accelerator-type=v5p-256",
       "--runtime-version=v2-alpha-tpuv5", "--node-id=c7b", "--spot"],
      ["bash", "-c", WAIT],
      ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse", "configs", wheel, "c7b:", *WHERE, "--worker=all"],
      [*ssh, f"--command={INSTALL}unimodal-venv/bin/pip install -q \"{WHEEL}[tpu]\" && unimodal-venv/bin/pip "
             f"install -q --force-reinstall --no-deps {WHEEL}"],
      [*ssh, f"--command=set -o pipefail; cd ~ && {{ {RUN} & echo $! > unimodal-train.pid; wait $!; }} 2>&1 | "
             f"tee -a unimodal-train.log"]]


def test_tpu_vm_two_slices_up_queues_two_nodes_and_runs_on_all_of_them():
  package = "unimodal_jax[tpu] @ git+https://github.com/org/repo@abc123"
  ssh = ["gcloud", "compute", "tpus", "queued-resources", "ssh", "c7b", *WHERE, "--node=all", "--worker=all"]
  assert dry_run("unimodal-launch-tpu-vm", "up", *TPU, "--num_slices=2", "--provisioning=best-effort",
                 f"--package={package}", "--detach", "--env=LIBTPU_INIT_ARGS=--xla_tpu_enable_async_all_gather=true",
                 *TRAIN) == [
      ["gcloud", "alpha", "compute", "tpus", "queued-resources", "create", "c7b", *WHERE,
       "--accelerator-type=v5p-256", "--runtime-version=v2-alpha-tpuv5", "--node-count=2", "--node-prefix=c7b",
       "--best-effort"],
      ["bash", "-c", WAIT],
      ["gcloud", "compute", "tpus", "queued-resources", "scp", "--recurse", "configs", "c7b:", *WHERE, "--node=all",
       "--worker=all"],
      [*ssh, f"--command={INSTALL}unimodal-venv/bin/pip install -q {shlex.quote(package)}"],
      [*ssh, "--command=cd ~ && { setsid nohup env JAX_PLATFORMS=tpu,cpu "
             "LIBTPU_INIT_ARGS=--xla_tpu_enable_async_all_gather=true unimodal-venv/bin/unimodal-train "
             "--config=configs/chameleon_7b.py --workdir=gs://bkt/runs/c7b --distributed=auto "
             "--config.mesh.dcn_data=2 >> unimodal-train.log 2>&1 < /dev/null & echo $! > unimodal-train.pid; }"]]


@pytest.mark.parametrize("slices", [1, 2])
def test_tpu_vm_logs_stop_and_delete(slices):
  flags = [*TPU, f"--num_slices={slices}", "--package=unimodal_jax[tpu]"]
  ssh = (["gcloud", "compute", "tpus", "tpu-vm", "ssh", "c7b", *WHERE] if slices == 1 else
         ["gcloud", "compute", "tpus", "queued-resources", "ssh", "c7b", *WHERE])
  nodes = [] if slices == 1 else ["--node=0"]
  assert dry_run("unimodal-launch-tpu-vm", "logs", *flags) == [
      [*ssh, *nodes, "--worker=0", "--command=tail -n 200 -F unimodal-train.log"]]
  nodes = [] if slices == 1 else ["--node=all"]
  assert dry_run("unimodal-launch-tpu-vm", "stop", *flags) == [
      [*ssh, *nodes, "--worker=all", "--command=pid=$(cat unimodal-train.pid 2>/dev/null) && grep -qa unimodal-train "
                                     "/proc/$pid/cmdline && kill -TERM $pid; true"]]
  assert dry_run("unimodal-launch-tpu-vm", "delete", *flags) == [
      ["gcloud", "compute", "tpus", "queued-resources", "delete", "c7b", *WHERE, "--force", "--quiet"]]


def test_tpu_vm_setup_mounts_the_bucket_on_every_worker_before_installing():
  (_, ssh) = dry_run("unimodal-launch-tpu-vm", "setup", *TPU, "--package=unimodal_jax[tpu]", "--mount_bucket=bkt")
  script = remote(ssh)
  assert script.startswith("set -e; command -v gcsfuse > /dev/null || {")
  assert ("mountpoint -q /gcs/bkt || gcsfuse --implicit-dirs --rename-dir-limit=1000000 bkt /gcs/bkt; "
          "[ -x ~/.local/bin/uv ]") in script
  assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0  # it parses


@pytest.mark.parametrize("slices", [1, 2])
def test_xpk_up_builds_the_image_submits_the_workload_and_follows_it(slices):
  dcn = [] if slices == 1 else [f"--config.mesh.dcn_data={slices}"]
  assert dry_run("unimodal-launch-xpk", "up", *XPK, f"--num_slices={slices}", "--max_restarts=50", *TRAIN) == [
      ["docker", "build", "-f", "launch/Dockerfile", "-t", "gcr.io/my-proj/unimodal:v1", "."],
      ["docker", "push", "gcr.io/my-proj/unimodal:v1"],
      ["xpk", "workload", "create", "--cluster=tpu", "--workload=c7b", "--tpu-type=v5p-256",
       f"--num-slices={slices}", "--docker-image=gcr.io/my-proj/unimodal:v1",
       "--command=" + shlex.join(["env", "JAX_PLATFORMS=tpu,cpu", "bash", "launch/pod_train.sh",
                                  "--config=configs/chameleon_7b.py", "--workdir=gs://bkt/runs/c7b",
                                  "--distributed=auto", *dcn]),
       "--priority=medium", "--max-restarts=50", *WHERE],
      ["gcloud", "container", "clusters", "get-credentials", "tpu", "--region=us-east5", "--project=my-proj"],
      ["kubectl", "logs", "--follow", "--selector=jobset.sigs.k8s.io/jobset-name=c7b,jobset.sigs.k8s.io/job-index=0,"
       "batch.kubernetes.io/job-completion-index=0", "--container=jax-tpu", "--tail=-1"]]


@pytest.mark.parametrize("slices", [1, 2])
def test_xpk_cluster_and_delete(slices):
  assert dry_run("unimodal-launch-xpk", "cluster", *XPK, f"--num_slices={slices}", "--provisioning=reservation",
                 "--reservation=my-res") == [
      ["xpk", "cluster", "create", "--cluster=tpu", "--tpu-type=v5p-256", f"--num-slices={slices}", *WHERE,
       "--reservation=my-res"]]
  assert dry_run("unimodal-launch-xpk", "cluster", *XPK, f"--num_slices={slices}", "--provisioning=spot",
                 "--mount_bucket=bkt") == [
      ["xpk", "cluster", "create", "--cluster=tpu", "--tpu-type=v5p-256", f"--num-slices={slices}", *WHERE, "--spot",
       "--enable-gcsfuse-csi-driver"],
      ["xpk", "storage", "attach", "bkt", "--type=gcsfuse", "--bucket=bkt", "--cluster=tpu", "--auto-mount=true",
       "--mount-point=/gcs/bkt", "--readonly=false", "--size=1024",
       "--mount-options=implicit-dirs,rename-dir-limit=1000000", *WHERE]]
  assert dry_run("unimodal-launch-xpk", "delete", *XPK) == [
      ["xpk", "workload", "delete", "--cluster=tpu", "--workload=c7b", *WHERE, "--force"]]
  assert dry_run("unimodal-launch-xpk", "delete_cluster", *XPK) == [
      ["xpk", "cluster", "delete", "--cluster=tpu", *WHERE, "--force"]]


@pytest.mark.parametrize("script, args, message", [
    ("unimodal-launch-tpu-vm", ["launch", *TPU], "unknown action 'launch': expected one of up, create"),
    ("unimodal-launch-tpu-vm", ["up", *TPU, "--package=x", "--config=configs/chameleon_7b.py"],
     "--config=configs/chameleon_7b.py is unimodal-train's flag: put unimodal-train's flags after --"),
    ("unimodal-launch-tpu-vm", ["up", *TPU, "--package=x", "--", "--config=configs/chameleon_7b.py"],
     "unimodal-train needs --workdir"),
    ("unimodal-launch-tpu-vm", ["train", *TPU, "--package=x", *TRAIN, "--distributed=explicit"],
     "--distributed=explicit: a pod runs one process per host"),
    ("unimodal-launch-tpu-vm", ["create", *TPU, "--package=x", "--wheel=dist/" + WHEEL],
     "give exactly one of --wheel"),
    ("unimodal-launch-tpu-vm", ["setup", *TPU, "--wheel=dist/nothing-here-" + WHEEL], "not found"),
    ("unimodal-launch-tpu-vm", ["create", "--name=c7b", *WHERE, "--accelerator_type=v5e-8", "--package=x"],
     "Cloud TPU names v5e slices v5litepod-N: --accelerator_type=v5litepod-8"),
    ("unimodal-launch-tpu-vm", ["create", "--name=C7B", *WHERE, "--accelerator_type=v5p-8", "--package=x"],
     "--name='C7B': expected lowercase letters"),
    ("unimodal-launch-tpu-vm", ["delete", "--name=c7b", "--accelerator_type=v5p-8", "--package=x"],
     "--project is required"),
    ("unimodal-launch-tpu-vm", ["logs", *TPU, "--package=x", "--env=NOEQUALS"], "--env='NOEQUALS': expected KEY=VALUE"),
    ("unimodal-launch-tpu-vm", ["delete", *TPU, "--package=x", *TRAIN], "delete takes no unimodal-train flags"),
    ("unimodal-launch-tpu-vm", ["up", *TPU, "--package=x", *TRAIN, "--num_slices=2"],
     "flag, but it comes after --, among unimodal-train's: move it before --"),
    ("unimodal-launch-tpu-vm", ["setup", *TPU, "--package=x", "--mount_bucket=gs://bkt"],
     "--mount_bucket='gs://bkt': expected a bucket name such as my-bucket (no gs://)"),
    ("unimodal-launch-xpk", ["cluster", *XPK, "--provisioning=reservation"],
     "--reservation=NAME goes with --provisioning=reservation"),
    ("unimodal-launch-xpk", ["train", *XPK, "--workload=" + "w" * 41, *TRAIN], "at most 40 characters"),
    ("unimodal-launch-xpk", ["image", *XPK, "--context=/nonexistent"], "no launch/Dockerfile there"),
])
def test_bad_flags_are_usage_errors_naming_the_flag(script, args, message):
  out = launch(script, "--dry_run", *args)
  assert out.returncode == 2, (out.stdout, out.stderr)
  assert message in out.stderr and "--help" in out.stderr, out.stderr
  assert not out.stdout


def test_dry_run_after_the_separator_runs_nothing():
  out = launch("unimodal-launch-xpk", "delete", *XPK, "--", "--dry_run")
  assert out.returncode == 2 and "--dry_run is" in out.stderr and "move it before --" in out.stderr
  assert "+ xpk" not in out.stderr  # nothing ran


def test_an_unknown_flag_is_named():
  out = launch("unimodal-launch-xpk", "train", *XPK, "--num_slice=2", *TRAIN)
  assert out.returncode != 0 and "num_slice" in out.stderr


@pytest.mark.parametrize("train_argv, slices, added", [
    (["--config", "c.py", "--workdir", "w"], 1, ["--distributed=auto"]),
    (["--config=c.py", "--workdir=w", "--distributed=auto"], 1, []),
    (["--config=c.py", "--workdir=w"], 4, ["--distributed=auto", "--config.mesh.dcn_data=4"]),
    (["--config=c.py", "--workdir=w", "--config.mesh.dcn_fsdp=2"], 2, ["--distributed=auto"]),  # the user's layout
])
def test_every_worker_joins_the_cluster_and_multislice_defaults_to_data_parallel_slices(train_argv, slices, added):
  assert common.pod_train_argv(train_argv, slices) == [*train_argv, *added]


def test_running_a_command_that_fails_stops_there_with_its_status(capsys):
  code = common.run_commands([[sys.executable, "-c", "print('first')"], [sys.executable, "-c", "raise SystemExit(3)"],
                              [sys.executable, "-c", "print('never')"]], dry_run=False)
  out = capsys.readouterr()
  assert code == 3
  assert "+ " in out.err and "never" not in out.err + out.out


# A stand-in for unimodal-train as docs/training.md specifies it: a step every 0.1 s; SIGTERM -> "Preempted: saved
# step N" and exit 0; argv[1] steps, then exit argv[2]. It also shows the environment and arguments it got.
FAKE_TRAIN = """#!{python}
import os, signal, sys, time
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
print("JAX_PLATFORMS=" + os.environ.get("JAX_PLATFORMS", ""), "args=" + " ".join(sys.argv[1:]), flush=True)
steps = int(sys.argv[1].split("=")[-1])
for step in range(1, steps + 1):
  time.sleep(0.1)
  print(f"step {{step}}", flush=True)
  if stop:
    print(f"Preempted: saved step {{step}}, exiting.", flush=True)
    sys.exit(0)
sys.exit(int(sys.argv[2].split("=")[-1]) if len(sys.argv) > 2 else 0)
"""


def fake_train(path):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(FAKE_TRAIN.format(python=sys.executable))
  path.chmod(0o755)


def remote(ssh_command: list[str]) -> str:
  (flag,) = [a for a in ssh_command if a.startswith("--command=")]
  return flag[len("--command="):]


def worker_shell(script: str, home, **kw) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", "-c", script], cwd=home, env=dict(os.environ, HOME=str(home)), capture_output=True,
                        text=True, timeout=60, **kw)


ARGS = tpu_vm.TpuVmArgs(name="c7b", project="my-proj", zone="us-east5-a", accelerator_type="v5p-256",
                        package="unimodal_jax[tpu]")


def test_worker_runs_unimodal_train_with_the_env_streams_and_keeps_its_log_and_exit_status(tmp_path):
  fake_train(tmp_path / "unimodal-venv/bin/unimodal-train")
  (ssh,) = tpu_vm.train_commands(ARGS, ["--steps=3", "--exit=5", "--config=c.py", "--workdir=w"])
  out = worker_shell(remote(ssh), tmp_path)
  assert out.returncode == 5  # pipefail: the trainer's status, not tee's
  assert "JAX_PLATFORMS=tpu,cpu args=--steps=3 --exit=5 --config=c.py --workdir=w --distributed=auto" in out.stdout
  assert "step 3" in out.stdout and "step 3" in (tmp_path / "unimodal-train.log").read_text()
  assert (tmp_path / "unimodal-train.pid").read_text().strip().isdigit()


def test_detached_worker_stops_on_stop_after_saving(tmp_path):
  fake_train(tmp_path / "unimodal-venv/bin/unimodal-train")
  detached = tpu_vm.TpuVmArgs(**{**ARGS.__dict__, "detach": True})
  (ssh,) = tpu_vm.train_commands(detached, ["--steps=600", "--config=c.py", "--workdir=w"])
  assert worker_shell(remote(ssh), tmp_path).returncode == 0  # returns at once, the trainer running on
  log = tmp_path / "unimodal-train.log"
  deadline = time.monotonic() + 30
  while "step 2" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
    time.sleep(0.1)
  (stop,) = tpu_vm.stop_commands(detached)
  assert worker_shell(remote(stop), tmp_path).returncode == 0
  while "Preempted" not in log.read_text() and time.monotonic() < deadline:
    time.sleep(0.1)
  assert "Preempted: saved step" in log.read_text()
  pid = int((tmp_path / "unimodal-train.pid").read_text())
  while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not os.path.exists(f"/proc/{pid}")


def test_stop_leaves_a_stale_pid_alone(tmp_path):
  sleeper = subprocess.Popen(["sleep", "30"])
  try:
    (tmp_path / "unimodal-train.pid").write_text(str(sleeper.pid))
    (stop,) = tpu_vm.stop_commands(ARGS)
    assert worker_shell(remote(stop), tmp_path).returncode == 0
    assert sleeper.poll() is None  # not a unimodal-train: not signalled
  finally:
    sleeper.kill()
    sleeper.wait()


@pytest.mark.parametrize("states, code", [(["ACTIVE"], 0), (["WAITING_FOR_RESOURCES", "PROVISIONING", "ACTIVE"], 0),
                                          (["PROVISIONING", "FAILED"], 1), (["SUSPENDED"], 1), ([], 1)])
def test_create_waits_until_the_queued_resource_is_active(tmp_path, states, code):
  """A stand-in gcloud answers `describe` with the next state (none left: an error); a stand-in sleep returns."""
  (tmp_path / "states").write_text("".join(s + "\n" for s in states))
  (tmp_path / "gcloud").write_text(f"#!/bin/bash\ns=$(head -n1 {tmp_path}/states) && [ -n \"$s\" ] || exit 1\n"
                                   f"sed -i 1d {tmp_path}/states; echo $s\n")
  (tmp_path / "sleep").write_text("#!/bin/bash\n")
  for stub in ("gcloud", "sleep"):
    (tmp_path / stub).chmod(0o755)
  create, wait = tpu_vm.create_commands(ARGS)
  assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "c7b"]
  out = subprocess.run(wait, env=dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}"), capture_output=True,
                       text=True, timeout=30)
  assert out.returncode == code, out.stdout + out.stderr
  assert out.stdout.count("queued resource c7b:") == len(states)


@pytest.mark.parametrize("train_args, code", [(["--steps=3"], 0), (["--steps=2", "--exit=7"], 7)])
def test_pod_wrapper_passes_the_trainers_status_through(tmp_path, train_args, code):
  fake_train(tmp_path / "bin/unimodal-train")
  out = subprocess.run(["bash", os.path.join(REPO, xpk.POD_TRAIN), *train_args], capture_output=True, text=True,
                       timeout=30, env=dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}"))
  assert out.returncode == code
  assert "step 2" in out.stdout  # the log streams to the pod's output


def test_pod_wrapper_exits_42_after_a_preemption_save_so_xpk_restarts_the_workload(tmp_path):
  fake_train(tmp_path / "bin/unimodal-train")
  pod = subprocess.Popen(["bash", os.path.join(REPO, xpk.POD_TRAIN), "--steps=600"], stdout=subprocess.PIPE,
                         text=True, env=dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}"))
  assert "step 1" in pod.stdout.readline() + pod.stdout.readline()
  pod.send_signal(signal.SIGTERM)  # what the pod's shell forwards when GKE stops the pod
  assert pod.wait(timeout=30) == 42
  assert "Preempted: saved step" in pod.stdout.read()


def test_the_wrapper_looks_for_what_the_train_loop_prints_on_preemption():
  with open(os.path.join(REPO, "unimodal_jax/train/loop.py")) as f:
    assert 'print(f"Preempted: saved step {' in f.read()
  with open(os.path.join(REPO, xpk.POD_TRAIN)) as f:
    assert "grep -q '^Preempted: saved step'" in f.read()


def test_the_image_copies_what_the_workload_runs():
  with open(os.path.join(REPO, xpk.DOCKERFILE)) as f:
    copies = [line.split()[1:-1] for line in f if line.startswith("COPY ")]
  sources = [s for c in copies for s in c]
  assert all(os.path.exists(os.path.join(REPO, s)) for s in sources), sources
  assert "configs" in sources and xpk.POD_TRAIN in sources
