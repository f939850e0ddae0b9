"""Orbax checkpoints of a training run: the train state and the data position, together.

A checkpoint is a step directory that orbax writes under a temporary name and renames
when complete, so an interrupted save never leaves a half-written step that a resume
could pick up. Every process calls :meth:`RunCheckpoints.save`; orbax coordinates
multi-host writes. A checkpoint damaged later (a truncated file, a deleted directory)
is moved aside on resume and the newest one that restores is used instead.

A model is read from a checkpoint by its weights alone (:func:`restore_weights`): no
optimiser is built and its state is never read.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from ccnet_jax.errors import UserError

PyTree = Any
SKIPPED_DIR = "checkpoints_unreadable"


def abstract_like(tree: PyTree) -> PyTree:
  """Shapes, dtypes and shardings of ``tree``: the restore target orbax wants."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree,
  )


def _reason(error: Exception) -> str:
  """The first line of an error, short enough for a one-line message."""
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  return f"{type(error).__name__}: {text[:160]}" if text else type(error).__name__


class RunCheckpoints:
  """The last ``keep`` checkpoints of a run in ``directory``; each holds state and data position.

  ``create=False`` opens an existing directory only (evaluation must not create one).
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int, create: bool = True):
    if keep < 1:
      raise ValueError(f"train.keep_checkpoints={keep} must be at least 1.")
    self.directory = os.path.abspath(directory)
    if not create and not os.path.isdir(self.directory):
      raise FileNotFoundError(f"No checkpoint directory {self.directory}.")
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create),
        item_names=("state", "data"),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: PyTree, data_position: dict) -> None:
    """Saves and waits: on return the checkpoint is complete on disk."""
    previous = self.latest_step()
    try:
      self._manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_position)
          ),
          force=True,
      )
      self._manager.wait_until_finished()
    except Exception as error:  # Orbax and tensorstore wrap I/O errors in their own types.
      kept = "none was kept" if previous is None else f"the checkpoint of step {previous} is intact"
      raise UserError(
          f"could not write the checkpoint of step {step} to {self.directory} ({_reason(error)});"
          f" {kept}. Free disk space or fix the directory, then run the same command again."
      ) from error

  def restore(self, state_like: PyTree, step: int | None = None) -> tuple[PyTree, dict, int]:
    """Restores (state, data position, step) of ``step`` (default: the latest)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_like(state_like)),
            data=ocp.args.JsonRestore(),
        ),
    )
    return restored["state"], restored["data"], step

  def restore_part(self, target: PyTree, step: int) -> PyTree:
    """The subtree ``target`` (abstract arrays) of the train state of ``step``; the rest unread."""
    # Restore arguments from the target's shardings: without them orbax reads the saved
    # shardings instead, and warns that it does on every restore.
    args = ocp.args.PyTreeRestore(
        item=target,
        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True,
    )
    return self._manager.restore(step, args=ocp.args.Composite(state=args))["state"]

  def restore_newest(
      self, state_like: PyTree, *, report: Callable[[str], None] = print
  ) -> tuple[PyTree, dict, int] | None:
    """The newest checkpoint that restores; unreadable newer ones are moved aside and reported.

    None when there is no checkpoint. When none restores, nothing is moved and the error
    names every checkpoint and why it failed.
    """
    failures = []
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        restored = self.restore(state_like, step)
      except Exception as error:  # A damaged checkpoint fails in many libraries' types.
        failures.append((step, _reason(error)))
        continue
      for skipped, reason in failures:
        report(
            f"warning: the checkpoint of step {skipped} cannot be read ({reason}); moved it"
            f" to {self._set_aside(skipped)} and resumed from step {step}."
        )
      return restored
    if failures:
      listed = "; ".join(f"step {step}: {reason}" for step, reason in failures)
      raise UserError(
          f"no checkpoint in {self.directory} can be read ({listed}). Move the directory aside"
          " to start the run again, or choose another --workdir."
      )
    return None

  def _set_aside(self, step: int) -> str:
    """Moves step ``step`` out of the checkpoint directory, where orbax no longer sees it."""
    target = os.path.join(os.path.dirname(self.directory), SKIPPED_DIR, str(step))
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.rmtree(target, ignore_errors=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
    self._manager.reload()
    return target

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


WEIGHTS = ("params", "batch_stats")


def restore_weights(directory: str, target: PyTree) -> tuple[PyTree, int]:
  """({'params', 'batch_stats'}, step) of the newest checkpoint in ``directory``.

  ``target`` holds the abstract arrays (``jax.ShapeDtypeStruct``) of those two parts of the
  train state; nothing else of the checkpoint (optimiser state, data position) is read.
  """
  checkpoints = RunCheckpoints(directory, keep=1 << 30, create=False)
  try:
    step = checkpoints.latest_step()
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {directory}.")
    try:
      restored = checkpoints.restore_part({name: target[name] for name in WEIGHTS}, step)
    except Exception as error:  # A damaged checkpoint fails in many libraries' types.
      raise UserError(
          f"the checkpoint of step {step} in {directory} cannot be read"
          f" ({_reason(error)}); train again or pass --model=<model directory>."
      ) from error
  finally:
    checkpoints.close()
  return restored, step
