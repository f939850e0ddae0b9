"""A run's directory: checked writable first, used by one run at a time, tied to one config.

``WORKDIR/config.json`` records the resolved config of the run; a rerun on the same
workdir (a resume) must agree with it on every field that shapes the run (model,
optimiser, loss, data, batch, seed), and a disagreement is reported field by field.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from typing import Any

import ml_collections

from ccnet_jax.errors import UserError

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
CHECKPOINTS_DIR = "checkpoints"
# The model directories a run writes: its final model, and the one with the best evaluation.
FINAL_MODEL_DIR = "model"
BEST_MODEL_DIR = "best"
# Fields a resumed run may change: when and what it logs, evaluates and keeps, how long it
# runs, where the data lives, and how the same network is computed.
FREE_ON_RESUME = (
    "model.init",  # How the weights started: a checkpoint holds them since.
    "train.total_steps",
    "train.log_every",
    "train.eval_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.num_summary_images",
    "train.heartbeat_timeout_seconds",
    "train.init_from",
    "train.init_part",
    "eval.",
    "data.root",
    "data.tfds_data_dir",
    "data.manual_dir",
    "data.decoded_dir",
    "data.prefetch",
    "data.eval_split",
    "data.synthetic.num_eval",
    "model.cca_impl",
    "model.dtype",
    # Recorded by earlier versions, read by none: the dataset fixes them.
    "data.num_classes",
    "data.ignore_label",
    "loss.ignore_label",
)


def flatten_config(config: Any, prefix: str = "") -> dict[str, Any]:
  """{'train.seed': 0, ...}: the leaves of a nested ConfigDict or dict by dotted name."""
  flat = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      flat.update(flatten_config(value, name + "."))
    else:
      flat[name] = value
  return flat


def _as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def check_writable(workdir: str) -> None:
  """Creates ``workdir`` and checks that the run can write there, before any data is read."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as error:
    raise UserError(
        f"cannot create the workdir {workdir}: {error.strerror}; choose another" " --workdir."
    ) from None
  for parent, directories, files in os.walk(workdir):
    for path in [parent] + [os.path.join(parent, name) for name in files]:
      if not os.access(path, os.W_OK):
        raise UserError(
            f"{path} is not writable: make the workdir writable (chmod -R u+w"
            f" {workdir}) or choose another --workdir."
        )
    directories[:] = [d for d in directories if d != "predictions"]


class WorkdirLock:
  """An exclusive lock on ``workdir`` for this process; the kernel drops it when we die.

  ``WORKDIR/.lock`` holds ``pid@host`` of the holder, so a second run can say who has it.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = None

  def __enter__(self) -> "WorkdirLock":
    handle = open(self.path, "a+", encoding="utf-8")
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or "another process"
      handle.close()
      raise UserError(
          f"{os.path.dirname(self.path)} is in use by another run ({holder}); wait for it to"
          " end or choose another --workdir."
      ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    self._file = handle
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      self._file.close()  # Closing releases the lock.
      self._file = None


def saved_config(workdir: str) -> dict[str, Any] | None:
  """The resolved config a run recorded in ``workdir``, or None (a new or older run)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except (OSError, ValueError, RecursionError) as error:
    raise UserError(
        f"{path} cannot be read ({type(error).__name__}); restore it or delete it to accept the"
        " current config."
    ) from None
  if not isinstance(saved, dict):
    raise UserError(
        f"{path} holds a JSON {type(saved).__name__}, not the object of a run's config; restore"
        " it or delete it to accept the current config."
    )
  return saved


def config_differences(
    saved: dict[str, Any], config: ml_collections.ConfigDict, *, within: str = ""
) -> list[str]:
  """``field: saved -> now`` for each field under ``within`` that differs and is not free."""
  before, now = flatten_config(saved), flatten_config(_as_json(config))
  lines = []
  for name in sorted(before.keys() | now.keys()):
    if (
        not name.startswith(within)
        or name.startswith(FREE_ON_RESUME)
        or before.get(name) == now.get(name)
    ):
      continue
    lines.append(f"{name}: {before.get(name, '(absent)')!r} -> {now.get(name, '(absent)')!r}")
  return lines


def check_same_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume the run in ``workdir`` with a config that would change it."""
  saved = saved_config(workdir)
  if saved is None:
    return
  differences = config_differences(saved, config)
  if differences:
    raise UserError(
        f"the run in {workdir} was started with another config ({'; '.join(differences)});"
        " rerun with the saved values (see its config.json) or choose another --workdir."
    )


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Records the resolved config as ``WORKDIR/config.json`` (replaced atomically)."""
  path = os.path.join(workdir, CONFIG_FILE)
  staging = path + ".tmp"
  with open(staging, "w", encoding="utf-8") as f:
    json.dump(_as_json(config), f, indent=1, sort_keys=True)
  os.replace(staging, path)
