"""Dataset evaluation: sharded prediction, on-device confusion matrix, metrics, PNGs.

Each process feeds its own batches of :attr:`Evaluator.local_batch_size` rows, a multiple of
its share of the mesh's data shards (``make_eval_loader`` pads the last ones with
``valid=False`` rows, which the confusion matrix ignores); they are assembled into global
arrays sharded over the 'data' axis, and one jitted step predicts and adds the batch's
confusion matrix to a replicated running total. The model state is an argument
of that step, not a constant baked into the program, so a trainer can evaluate new
weights without recompiling.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from ccnet_jax.data.labels import IGNORE_LABEL
from ccnet_jax.evaluation.inference import InferenceSettings, predict_logits
from ccnet_jax.evaluation.metrics import confusion_matrix, metrics_from_confusion
from ccnet_jax.evaluation.png import colorize, overlay, save_predictions
from ccnet_jax.models.preprocessing import Preprocessing
from ccnet_jax.training.mesh import DATA_AXIS, batch_sharding, replicated

PredictFn = Callable[[Any, jax.Array], jax.Array]


def model_predict_fn(model: nnx.Module) -> tuple[PredictFn, nnx.State]:
  """``(predict_fn, state)`` for a CCNet: ``predict_fn(state, images)`` -> main logits.

  The model is merged inside the traced function and switched to eval mode there
  (BatchNorm running statistics, no dropout); the caller's model is left untouched.
  """
  graphdef, state = nnx.split(model)

  def predict_fn(state, images):
    network = nnx.merge(graphdef, state, copy=True)
    network.eval()
    return network(images)[0]

  return predict_fn, state


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
  """What one evaluation computed."""

  metrics: dict[str, Any]  # See metrics_from_confusion, plus 'confusion' (K x K, a list).
  overlays: dict[str, np.ndarray]  # Image name -> uint8 overlay of each image saved as PNG.


def local_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> int:
  """Rows of an eval batch of ``batch_size`` (global) that each process feeds: its share,
  rounded up to a multiple of its share of the mesh's data shards."""
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"eval.batch_size={batch_size!r} must be a positive integer.")
  multiple = max(mesh.shape[DATA_AXIS] // jax.process_count(), 1)
  share = max(batch_size // jax.process_count(), 1)
  return -(-share // multiple) * multiple


class Evaluator:
  """Compiles the evaluation step once per input shape; call :meth:`evaluate` per checkpoint."""

  def __init__(
      self,
      predict_fn: PredictFn,
      *,
      settings: InferenceSettings,
      batch_size: int,
      num_classes: int,
      mesh: jax.sharding.Mesh,
      ignore_label: int = IGNORE_LABEL,
  ):
    """Compiles nothing yet; the first :meth:`evaluate` traces the step.

    Args:
      predict_fn: ``(state, images) -> logits`` at the network's output stride.
      settings: whole or sliding, scales, flip (:class:`InferenceSettings`).
      batch_size: images a step evaluates, over all processes (``eval.batch_size``).
      num_classes: K.
      mesh: a mesh with a 'data' axis; batches are sharded over it.
      ignore_label: label value that is not evaluated.
    """
    if DATA_AXIS not in mesh.axis_names:
      raise ValueError(f"The evaluation mesh needs a {DATA_AXIS!r} axis, got {mesh.axis_names}.")
    self.local_batch_size = local_batch_size(batch_size, mesh)
    self.num_classes = num_classes
    self.mesh = mesh
    self._batch_sharding = batch_sharding(mesh)
    self._replicated = replicated(mesh)
    predict = functools.partial(predict_logits, num_classes=num_classes, settings=settings)

    def step(state, confusion, images, labels, valid):
      # Under the mesh, kernels XLA cannot partition (Pallas) run per device in a shard_map.
      with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        logits = predict(functools.partial(predict_fn, state), images)
      predictions = jnp.argmax(logits, axis=-1).astype(jnp.int32)
      confusion = confusion + confusion_matrix(
          predictions, labels, num_classes, ignore_label=ignore_label, valid=valid
      )
      return confusion, predictions

    self._step = jax.jit(
        step, out_shardings=(self._replicated, self._batch_sharding), donate_argnums=1
    )

  def lower_step(self, state: Any, image_size: tuple[int, int]) -> tuple[jax.stages.Lowered, int]:
    """The step for one global batch of ``image_size`` images, lowered, not run; and that batch.

    ``state`` may be shapes (``jax.ShapeDtypeStruct``), to compile ahead of time.
    """
    shape = (self.local_batch_size * jax.process_count(), *image_size)
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=self._batch_sharding)
    confusion = jax.ShapeDtypeStruct((self.num_classes,) * 2, jnp.int32, sharding=self._replicated)
    lowered = self._step.lower(
        state,
        confusion,
        spec(shape + (3,), jnp.float32),
        spec(shape, jnp.int32),
        spec(shape[:1], jnp.bool_),
    )
    return lowered, shape[0]

  def _arrays(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The process-local batch as arrays, checked against the fixed local batch size."""
    images = np.asarray(batch["image"], np.float32)
    labels = np.asarray(batch["label"], np.int32)
    valid = np.asarray(batch.get("valid", np.ones(len(images), bool)), bool)
    rows = self.local_batch_size
    if images.shape[:1] != (rows,) or labels.shape != images.shape[:3] or valid.shape != (rows,):
      raise ValueError(
          f"Eval batch shapes: image {images.shape}, label {labels.shape}, valid"
          f" {valid.shape}; expected ({rows}, h, w, 3), ({rows}, h, w), ({rows},): pad a short"
          " batch with valid=False rows, as make_eval_loader does."
      )
    return {"image": images, "label": labels, "valid": valid}

  def evaluate(
      self,
      state: Any,
      batches: Iterable[Mapping[str, Any]],
      *,
      out_dir: str | None = None,
      num_images_to_save: int = 0,
      palette: np.ndarray | None = None,
      preprocessing: Preprocessing | None = None,
  ) -> EvaluationResult:
    """Metrics over all batches (identical on every process), and the overlays it saved.

    Each batch is {'image', 'label', 'valid', 'name'} of ``local_batch_size`` rows. Process 0
    writes PNGs of its first ``num_images_to_save`` valid images to ``out_dir``; that needs
    the dataset ``palette`` and the ``preprocessing`` of the batches' images (to show them
    as they were).
    """
    save = out_dir is not None and num_images_to_save > 0 and jax.process_index() == 0
    if save and (palette is None or preprocessing is None):
      raise ValueError(
          "Saving eval PNGs needs palette= (DatasetInfo.palette) and preprocessing= (of the"
          " images); pass them or set out_dir=None."
      )
    confusion = jax.make_array_from_process_local_data(
        self._replicated, np.zeros((self.num_classes, self.num_classes), np.int32)
    )
    pngs = _Pngs(out_dir, palette, preprocessing) if save else None
    overlays, num_batches = {}, 0
    for batch in batches:
      local = self._arrays(batch)
      global_arrays = [
          jax.make_array_from_process_local_data(self._batch_sharding, local[key])
          for key in ("image", "label", "valid")
      ]
      confusion, predictions = self._step(state, confusion, *global_arrays)
      num_batches += 1
      if pngs and len(overlays) < num_images_to_save:
        overlays.update(
            pngs.save(batch, local, self._local(predictions), num_images_to_save - len(overlays))
        )
    if not num_batches:
      raise ValueError("The evaluation data yielded no batches; check data.eval_split.")
    totals = np.asarray(confusion.addressable_data(0))
    metrics = metrics_from_confusion(totals)
    metrics["confusion"] = totals.tolist()
    return EvaluationResult(metrics, overlays)

  def _local(self, predictions: jax.Array) -> np.ndarray:
    return np.asarray(
        multihost_utils.global_array_to_host_local_array(predictions, self.mesh, P(DATA_AXIS))
    )


@dataclasses.dataclass(frozen=True)
class _Pngs:
  """Writes an evaluated batch's images as prediction PNGs."""

  out_dir: str
  palette: np.ndarray
  preprocessing: Preprocessing

  def save(self, batch, local, predictions, limit: int) -> dict[str, np.ndarray]:
    """PNGs of the first ``limit`` valid images; their overlays by name."""
    names = list(batch.get("name", [])) or [f"image_{i}" for i in range(len(local["valid"]))]
    overlays = {}
    for i in np.flatnonzero(local["valid"])[:limit]:
      image = self.preprocessing.denormalize(local["image"][i])
      save_predictions(
          self.out_dir, str(names[i]), image, predictions[i], local["label"][i], self.palette
      )
      overlays[str(names[i])] = overlay(image, colorize(predictions[i], self.palette))
    return overlays
