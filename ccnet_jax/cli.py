"""How every command runs: absl flags, the shared start of train.py and eval.py, user errors.

Every command (``train.py``, ``eval.py``, ``predict.py``, ``python -m ccnet_jax.convert``,
``.data``, ``.export``, ``.visualize``, ``.explore``, ``.aot``) is a ``main(arguments)``
handed to :func:`run`, so all parse their flags alike (``--help`` prints the command's docstring
and its flags, ``--helpfull`` every flag) and end alike when they stop early, in one line that
says what the command kept (its ``kept`` text):

* on a user error (a missing dataset, a bad flag or config field, a corrupt file) or a file
  that cannot be written or read (a full disk, a folder that is a file): ``error: ...`` on
  stderr and exit status 1, never a traceback (``CCNET_JAX_TRACEBACK=1`` in the environment
  shows it);
* on Ctrl-C, SIGTERM or SIGHUP, at any moment: ``error: interrupted (SIGINT); ...`` and exit
  status 130, the outputs being written discarded (``ccnet_jax.interrupts``,
  ``ccnet_jax.atomic``).
"""

from __future__ import annotations

import dataclasses
import errno
import os
import runpy
import sys
from typing import Any, Callable, Sequence

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from ccnet_jax import atomic, interrupts
from ccnet_jax.errors import UserError
from ccnet_jax.training.workdir import flatten_config

# Flags that the functions below define belong to the command that calls them (its --help).
flags.disclaim_key_flags()

# Raised for what the user can fix: a missing dataset, a bad config value, a corrupt file.
USER_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, UserError)

CONFIG_HELP = (
    "Experiment config file (configs/*.py). Override any field as --config.SECTION.FIELD=VALUE;"
    " --config=FILE --print_config lists every field with its value."
)


def _exit_with(message: str, status: int = 1) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


# What an errno means for the user, when it is one of those a command's files commonly meet.
_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.EEXIST: "a file is in the way",
    errno.ENOTDIR: "a file stands where a folder is needed",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENAMETOOLONG: "the name is too long",
}


def _describe_os_error(error: OSError, kept: str) -> str:
  """``[Errno 28] ...`` as one sentence naming the path and why, then what the command kept."""
  where = f" {error.filename}" if error.filename else ""
  reason = _REASONS.get(error.errno) or error.strerror or str(error)
  return f"cannot write or read{where}: {reason}; {kept}"


def _ignore_closed_event_loops(unraisable) -> None:
  """Drops 'Event loop is closed' errors that library threads report after their loop ended.

  When orbax gives up on a damaged checkpoint, tensorstore reads still in flight finish after
  orbax's event loop has closed, and each reports that from its own thread; the user has been
  told about the checkpoint already. Every other unraisable error is printed as usual.
  """
  error = unraisable.exc_value
  if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
    return
  sys.__unraisablehook__(unraisable)


def run_user_command(command: Callable[[], object], kept: str = interrupts.DEFAULT_MESSAGE):
  """Runs ``command``; exits with status 1 and the error's message on a user error, with
  ``kept`` (what the command leaves behind) after a file error or an interrupt."""
  if not os.environ.get("CCNET_JAX_TRACEBACK"):
    # Libraries (orbax, absl) log their own view of a failure before ours reaches the user.
    logging.set_verbosity(logging.FATAL)
    sys.unraisablehook = _ignore_closed_event_loops
  try:
    command()
  except USER_ERRORS as error:
    if os.environ.get("CCNET_JAX_TRACEBACK"):
      raise
    _exit_with(str(error))
  except OSError as error:
    if os.environ.get("CCNET_JAX_TRACEBACK"):
      raise
    _exit_with(_describe_os_error(error, kept))
  except KeyboardInterrupt:  # Raised by a handler other than ccnet_jax.interrupts'.
    _exit_with(f"interrupted; {kept}", interrupts.EXIT_STATUS)


def _config_from_argv(argv: Sequence[str]) -> ml_collections.ConfigDict | None:
  """The config named by ``--config=FILE`` in ``argv``, loaded without its overrides."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      path = arg[len("--config=") :]
    elif arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
    else:
      continue
    try:
      return runpy.run_path(path.split(":", 1)[0])["get_config"]()
    except Exception:  # pylint: disable=broad-except
      return None  # The config file's own error is reported when it is loaded.
  return None


def _config_field_error(error: Exception, argv: Sequence[str]) -> str:
  """``--config.train.steps=40``: names the unknown field and lists its section's fields."""
  config = _config_from_argv(argv)
  for arg in argv[1:]:
    if config is None or not arg.startswith("--config."):
      continue
    path = arg[len("--config.") :].split("=", 1)[0].split(".")
    node = config
    for depth, key in enumerate(path):
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        section = ".".join(["config", *path[:depth]])
        fields = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        return (
            f"{arg.split('=', 1)[0]}: {section} has no field {key!r}; its fields are "
            f"{', '.join(fields)} (--print_config lists them all)."
        )
      node = node[key]
  return f"the command line cannot be parsed: {error}"


def _first_line(error: Exception) -> str:
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[-1] if lines else type(error).__name__


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with a mistyped flag, config field or config file as one line."""
  if flags.FLAGS.is_parsed():  # A second command in one process starts from the defaults.
    flags.FLAGS.unparse_flags()
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as error:
    _exit_with(f"{error}. Run with --helpfull to list the flags.")
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    _exit_with(_config_field_error(error, argv))
  if "config" in flags.FLAGS and flags.FLAGS["config"].present:
    try:
      # A config file that fails to load gives a value that raises when first read.
      flags.FLAGS["config"].value.get("train")
    except Exception as error:  # pylint: disable=broad-except
      _exit_with(f"--config={config_file()} cannot be loaded: {_first_line(error)}")
  return remaining


def config_file(flag_name: str = "config") -> str:
  return config_flags.get_config_filename(flags.FLAGS[flag_name])


def default_workdir(workdir: str | None, flag_name: str = "config") -> str:
  """``--workdir`` when given, else ``runs/<config file stem>``, printed so it can be found."""
  if workdir:
    return workdir
  stem = os.path.splitext(os.path.basename(config_file(flag_name)))[0]
  workdir = os.path.join("runs", stem)
  print(
      f"Workdir: {workdir} (the default for {config_file(flag_name)}; --workdir changes it).",
      flush=True,
  )
  return workdir


def print_config(config: ml_collections.ConfigDict) -> None:
  """Every field of the resolved config, one per line as ``--config.a.b=value``."""
  for name, value in sorted(flatten_config(config).items()):
    print(f"--config.{name}={value}")


def run(
    main: Callable[[list[str]], object],
    argv: Sequence[str] | None = None,
    *,
    kept: str = interrupts.DEFAULT_MESSAGE,
) -> None:
  """Parses the flags of ``argv`` (default ``sys.argv``), calls ``main(positional arguments)``
  as a user command (see the module docstring) and exits: 0 when it returns, 1 on a user error,
  130 on a signal. ``kept`` tells the user what an early stop leaves (one sentence).
  """
  with interrupts.handled(kept, cleanup=atomic.discard_in_flight):
    app.run(
        lambda args: run_user_command(lambda: main(args[1:]), kept),
        argv=argv,
        flags_parser=parse_flags,
    )


def required(holder: flags.FlagHolder) -> Any:
  """The value of a flag that the command cannot do without; a user error when it is unset."""
  if holder.value is None:
    raise UserError(f"--{holder.name} is required (--help describes it).")
  return holder.value


def no_arguments(arguments: Sequence[str]) -> None:
  if arguments:
    raise UserError(
        f"unexpected arguments {' '.join(arguments)}; this command takes flags only (--help)."
    )


@dataclasses.dataclass(frozen=True)
class ExperimentFlags:
  """``--config``, ``--workdir`` and ``--print_config``: how train.py and eval.py name a run."""

  config: flags.FlagHolder
  workdir: flags.FlagHolder
  print_config: flags.FlagHolder

  def run(self, command: Callable[[ml_collections.ConfigDict, str], object], *, kept: str) -> None:
    """Runs ``command(config, workdir)`` as the program, after ``--print_config``'s check;
    ``kept`` as for :func:`run`."""

    def main(arguments: list[str]) -> None:
      no_arguments(arguments)
      config = required(self.config)
      if self.print_config.value:
        print_config(config)
        return
      command(config, default_workdir(self.workdir.value))

    run(main, kept=kept)


def define_experiment_flags(workdir_help: str) -> ExperimentFlags:
  """Defines the flags of :class:`ExperimentFlags` for the calling command."""
  return ExperimentFlags(
      config=config_flags.DEFINE_config_file("config", None, CONFIG_HELP),
      workdir=flags.DEFINE_string("workdir", None, workdir_help),
      print_config=flags.DEFINE_bool("print_config", False, "Print every config field and exit."),
  )
