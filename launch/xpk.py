"""`unimodal-launch-xpk` from a checkout: run unimodal-train on GKE TPU slices with xpk (docs/launch.md).

  python launch/xpk.py ACTION --cluster=... --workload=... --project=... --zone=... --tpu_type=v5p-256 \\
      --docker_image=... [-- train flags]
"""
from unimodal_jax.cli import launch_xpk

if __name__ == "__main__":
  launch_xpk.run()
