"""Test setup: 8 fake CPU devices (set before JAX is imported) and shared fixtures."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# AOT tests load libtpu (no TPU needed); let several test processes do so at once.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
