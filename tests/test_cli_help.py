"""Every `unimodal-<command>` answers --help with its own flags and their help text, and exits 0; a stray positional
argument is a usage error naming the command."""
import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def console_scripts() -> dict[str, str]:
  """name -> 'module:function', read from setup.py (what `pip install` turns into commands)."""
  tree = ast.parse(open(os.path.join(REPO, "setup.py")).read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Dict):
      for key, value in zip(node.keys, node.values):
        if isinstance(key, ast.Constant) and key.value == "console_scripts":
          return dict(entry.value.split("=", 1) for entry in value.elts)
  raise AssertionError("setup.py declares no console_scripts")


def run(target: str, *args):
  module, function = target.split(":")
  code = f"import sys; sys.argv[0] = 'cmd'; from {module} import {function}; {function}()"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env,
                        cwd=REPO)


def test_every_command_lives_in_cli():
  assert all(t.startswith("unimodal_jax.cli.") for t in console_scripts().values()), console_scripts()


@pytest.mark.parametrize("name", sorted(console_scripts()))
def test_help_prints_the_commands_own_flags_and_exits_0(name):
  out = run(console_scripts()[name], "--help")
  assert out.returncode == 0, out.stderr[-2000:]
  flag_lines = [line for line in out.stdout.splitlines() if line.startswith("  --")]
  assert flag_lines, out.stdout
  assert all(": " in line for line in flag_lines)  # each with its help text
  assert "--xla_" not in out.stdout and "--jax_" not in out.stdout  # not JAX's flags


def test_a_stray_argument_is_a_usage_error_naming_the_command():
  out = run(console_scripts()["unimodal-train"], "extra", "--config=configs/tiny.py", "--workdir=/tmp/x")
  assert out.returncode == 2
  assert "cmd: unexpected arguments: ['extra']" in out.stderr and "cmd --help" in out.stderr


def test_the_ingest_commands_import_into_one_process_and_each_lists_the_shared_flags():
  """unimodal-tokenize and unimodal-make-shards share --text_tokenizer, --jsonl, --out_dir, --prefix and
  --on_bad_record (cli/ingest_flags.py): a tool importing both must not meet absl's DuplicateFlagError."""
  code = "import unimodal_jax.cli.tokenize, unimodal_jax.cli.make_shards"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-2000:]
  for name in ("unimodal-tokenize", "unimodal-make-shards"):
    help_text = run(console_scripts()[name], "--help").stdout
    for flag in ("text_tokenizer", "jsonl", "out_dir", "prefix", "on_bad_record"):
      assert f"\n  --{flag}: " in help_text, (name, flag)


def test_python_m_help_lists_the_distributed_flags_too():
  out = subprocess.run([sys.executable, "-m", "unimodal_jax.cli.tokenize", "--help"], capture_output=True, text=True,
                       timeout=120, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0 and "\n  --distributed: " in out.stdout and "\n  --text_tokenizer: " in out.stdout
