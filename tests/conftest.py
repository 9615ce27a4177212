"""Test setup: 8 fake CPU devices (set before JAX is imported) and shared fixtures."""
import os
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache per test run, shared by the xdist workers and the CLI subprocesses they start
# (they inherit the environment): many tests compile the same small steps. Fresh per run, so a run's time is honest.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), "unimodal_jax_tests_xla_cache", os.environ.get("PYTEST_XDIST_TESTRUNUID", str(os.getpid()))))
# AOT tests load libtpu (no TPU needed); let several test processes do so at once.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
