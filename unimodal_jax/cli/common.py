"""What every `unimodal-<command>` shares: `--help` that prints the command's own flags and exits 0, one positional
argument check, absl logging at WARNING unless `--verbosity` is given, usage errors as one line naming the command."""
import os
import sys
import traceback
from collections.abc import Callable
from typing import NamedTuple

from absl import app, flags, logging

HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "-?")


def command_help(module) -> str:
  """The command's docstring and its own flags (those it defines or adopts) with their help text (not JAX's or
  absl's)."""
  # run as `python -m`, absl files the module's flags under sys.argv[0]
  own = flags.FLAGS.get_key_flags_for_module(module.__name__) or flags.FLAGS.get_key_flags_for_module(sys.argv[0])
  lines = [(module.__doc__ or "").strip(), "", "flags:"]
  for flag in sorted(own, key=lambda f: f.name):
    default = "" if flag.default is None else f" (default: {flag.default_as_str})"
    lines.append(f"  --{flag.name}: {flag.help}{default}")
  lines.append("\nAlso: --verbosity=N (absl logging; default: warnings only) and --helpfull (every flag).")
  return "\n".join(lines)


def exit_with_error(error: BaseException, code: int = 1):
  """Print the traceback and, last, one line naming the error; then leave at once: at interpreter teardown orbax's
  and grain's background threads would print pages of noise ('Event loop is closed') after it."""
  traceback.print_exception(error)
  message = " ".join(str(error).split())  # one line, whatever the error text holds
  print(f"{os.path.basename(sys.argv[0])}: {type(error).__name__}: {message}", file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def run(module, main: Callable[..., None], max_positional: int = 0, verbosity: int = logging.WARNING) -> None:
  """Run `main()` (or `main(positional_args)` when `max_positional` > 0) as the console script `module` defines;
  `main` reads the module's flags. absl logs at `verbosity` unless --verbosity is given."""
  command = os.path.basename(sys.argv[0])
  if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
    print(command_help(module))
    sys.exit(0)

  def absl_main(argv):
    if not flags.FLAGS["verbosity"].present:  # orbax logs every save at INFO; --verbosity=0 brings it back
      logging.set_verbosity(verbosity)
    try:
      if len(argv) - 1 > max_positional:
        raise app.UsageError(f"unexpected arguments: {argv[1 + max_positional:]}")
      main(argv[1:]) if max_positional else main()
    except app.UsageError as e:
      print(f"{command}: {e}\nTry `{command} --help`.", file=sys.stderr)
      sys.exit(2)

  app.run(absl_main)


class Distributed(NamedTuple):
  """The flags that join a multi-process JAX cluster; `initialize()` joins it (before any device is touched)."""
  mode: flags.FlagHolder
  coordinator: flags.FlagHolder
  num_processes: flags.FlagHolder
  process_id: flags.FlagHolder
  heartbeat_timeout: flags.FlagHolder

  def initialize(self) -> None:
    import jax
    if self.mode.value == "auto":
      jax.distributed.initialize(heartbeat_timeout_seconds=self.heartbeat_timeout.value)
    elif self.mode.value == "explicit":
      missing = [f.name for f in (self.coordinator, self.num_processes, self.process_id) if f.value is None]
      if missing:
        raise app.UsageError(f"--distributed=explicit needs {', '.join('--' + m for m in missing)}")
      jax.distributed.initialize(coordinator_address=self.coordinator.value, num_processes=self.num_processes.value,
                                 process_id=self.process_id.value,
                                 heartbeat_timeout_seconds=self.heartbeat_timeout.value)


def define_distributed_flags(module_name: str) -> Distributed:
  """Defines --distributed and its companions as flags of the command `module_name` (so its --help lists them)."""
  own = {"module_name": sys.argv[0] if module_name == "__main__" else module_name}  # absl's name for `python -m`'s
  return Distributed(
      flags.DEFINE_enum("distributed", "off", ["off", "auto", "explicit"],
                        "off: one process; auto: jax.distributed.initialize() discovers the cluster (TPU VMs, SLURM); "
                        "explicit: from the three flags below.", **own),
      flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (--distributed=explicit).", **own),
      flags.DEFINE_integer("num_processes", None, "Number of processes (--distributed=explicit).", **own),
      flags.DEFINE_integer("process_id", None, "This process's index (--distributed=explicit).", **own),
      flags.DEFINE_integer("heartbeat_timeout_s", 100, "A process silent this long counts as dead; the others then "
                           "exit with an error instead of waiting for it forever.", **own))
