"""Orbax checkpoints of a training run: the train state and the data position, together.

A checkpoint is a step directory that orbax writes under a temporary name and renames
when complete, so an interrupted save never leaves a half-written step that a resume
could pick up. Every process calls :meth:`save`; orbax coordinates multi-host writes.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

PyTree = Any


def abstract_like(tree: PyTree) -> PyTree:
  """Shapes, dtypes and shardings of ``tree``: the restore target orbax wants."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree,
  )


class RunCheckpoints:
  """The last ``keep`` checkpoints of a run in ``directory``; each holds state and data position."""

  def __init__(self, directory: str | os.PathLike, *, keep: int):
    if keep < 1:
      raise ValueError(f"train.keep_checkpoints={keep} must be at least 1.")
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=("state", "data"),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: PyTree, data_position: dict) -> None:
    """Saves and waits: on return the checkpoint is complete on disk."""
    self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_position)
        ),
        force=True,
    )
    self._manager.wait_until_finished()

  def restore(self, state_like: PyTree, step: int | None = None) -> tuple[PyTree, dict, int]:
    """Restores (state, data position, step) of ``step`` (default: the latest)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self._manager.directory}.")
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_like(state_like)),
            data=ocp.args.JsonRestore(),
        ),
    )
    return restored["state"], restored["data"], step

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
