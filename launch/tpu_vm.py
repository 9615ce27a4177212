"""`unimodal-launch-tpu-vm` from a checkout: run unimodal-train on Cloud TPU VM slices (docs/launch.md).

  python launch/tpu_vm.py ACTION --name=... --project=... --zone=... --accelerator_type=v5p-256 [-- train flags]
"""
from unimodal_jax.cli import launch_tpu_vm

if __name__ == "__main__":
  launch_tpu_vm.run()
