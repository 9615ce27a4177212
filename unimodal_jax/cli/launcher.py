"""What the two launcher commands share: `<command> ACTION [flags] [-- unimodal-train flags]`, a launch error shown as
a usage error naming the flag, and --dry_run printing the commands instead of running them."""
import os
import sys
from collections.abc import Callable, Sequence

from absl import app, flags

from unimodal_jax.cli import common
from unimodal_jax.launch import common as launch_common

# unimodal-train's own flags: given before `--`, absl would only say it does not know them
TRAIN_FLAGS = ("--config", "--workdir", "--distributed")


def misplaced_train_flag(argv: Sequence[str]) -> str | None:
  before = argv[:list(argv).index("--")] if "--" in argv else argv
  return next((a for a in before if a.split("=")[0].split(".")[0] in TRAIN_FLAGS), None)


def run(module, actions: Sequence[str], train_actions: Sequence[str],
        build: Callable[[str, list[str]], list[list[str]]], dry_run: Callable[[], bool]) -> None:
  """Parse `module`'s flags, build the commands of ACTION with `build(action, train_argv)`, then print (dry run) or
  run them; exit with the first failing command's status."""
  command = os.path.basename(sys.argv[0])
  misplaced = misplaced_train_flag(sys.argv[1:])
  if misplaced and not any(arg in common.HELP_FLAGS for arg in sys.argv[1:]):
    print(f"{command}: {misplaced} is unimodal-train's flag: put unimodal-train's flags after --, e.g. "
          f"{command} up ... -- --config=configs/chameleon_7b.py --workdir=gs://BUCKET/run\n"
          f"Try `{command} --help`.", file=sys.stderr)
    sys.exit(2)

  def main(positional: list[str]):
    if not positional or positional[0] not in actions:
      got = f"unknown action {positional[0]!r}" if positional else "no action"
      raise app.UsageError(f"{got}: expected one of {', '.join(actions)}")
    action, train_argv = positional[0], positional[1:]
    own = {f.name for f in flags.FLAGS.get_flags_for_module(module.__name__)}
    stray = next((a for a in train_argv if a.lstrip("-").split("=")[0].removeprefix("no") in own), None)
    if stray:  # `-- ... --dry_run` would otherwise run the commands for real
      raise app.UsageError(f"{stray} is {command}'s flag, but it comes after --, among unimodal-train's: move it "
                           f"before --")
    if train_argv and action not in train_actions:
      raise app.UsageError(f"{action} takes no unimodal-train flags, got {train_argv}")
    try:
      planned = build(action, train_argv)
    except launch_common.LaunchError as e:
      raise app.UsageError(str(e)) from e
    sys.exit(launch_common.run_commands(planned, dry_run()))

  common.run(module, main, max_positional=sys.maxsize)
