"""Run `unimodal-train` as several JAX processes on this machine, joined on 127.0.0.1 (multi-host rehearsal).

  python launch/local_multihost.py --num_processes 2 --devices_per_process 4 -- \\
      --config configs/tiny.py --workdir /tmp/multihost

Each process gets its own fake CPU devices and reads its own share of the data; together they form one
mesh. Output lines are prefixed with the process id. If any process fails, the others are stopped and
the exit code is the first failure's.
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import threading
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def train_command() -> list[str]:
  found = shutil.which("unimodal-train", path=os.path.dirname(sys.executable)) or shutil.which("unimodal-train")
  return [found] if found else [sys.executable, "-m", "unimodal_jax.cli.train"]


def forward(process_id: int, stream):
  for line in stream:
    sys.stdout.write(f"[{process_id}] {line}")
    sys.stdout.flush()


def launch(num_processes: int, devices_per_process: int, train_args: list[str], timeout_s: float) -> int:
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
  procs = [subprocess.Popen(
      [*train_command(), *train_args, "--distributed=explicit", f"--coordinator_address=127.0.0.1:{port}",
       f"--num_processes={num_processes}", f"--process_id={i}"],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(num_processes)]
  threads = [threading.Thread(target=forward, args=(i, p.stdout), daemon=True) for i, p in enumerate(procs)]
  for t in threads:
    t.start()
  deadline = time.monotonic() + timeout_s
  code = 0
  while any(p.poll() is None for p in procs):
    failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
    if failed or time.monotonic() > deadline:
      code = failed[0] if failed else 124
      for p in procs:
        if p.poll() is None:
          p.kill()
      break
    time.sleep(0.2)
  for p in procs:
    p.wait()
  for t in threads:
    t.join(timeout=5)
  return code or next((p.returncode for p in procs if p.returncode), 0)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=4)
  parser.add_argument("--timeout_s", type=float, default=1800)
  parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then unimodal-train's flags")
  args = parser.parse_args()
  train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
  sys.exit(launch(args.num_processes, args.devices_per_process, train_args, args.timeout_s))


if __name__ == "__main__":
  main()
