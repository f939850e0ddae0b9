"""Dataset evaluation: sharded prediction, on-device confusion matrix, metrics, PNGs.

Each process feeds its own batches; they are padded to a fixed multiple of the mesh's
data shards (``valid=False`` rows, ignored by the confusion matrix), assembled into
global arrays sharded over the 'data' axis, and one jitted step predicts and adds the
batch's confusion matrix to a replicated running total. The model state is an argument
of that step, not a constant baked into the program, so a trainer can evaluate new
weights without recompiling.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

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


class Evaluator:
  """Compiles the evaluation step once per input shape; call :meth:`evaluate` per checkpoint."""

  def __init__(
      self,
      predict_fn: PredictFn,
      *,
      eval_config: ml_collections.ConfigDict,
      num_classes: int,
      mesh: jax.sharding.Mesh,
      ignore_label: int = 255,
  ):
    """Compiles nothing yet; the first :meth:`evaluate` traces the step.

    Args:
      predict_fn: ``(state, images) -> logits`` at the network's output stride.
      eval_config: mode, crop_size, overlap, scales, flip, align_corners, batch_size,
        num_images_to_save (see :func:`ccnet_jax.evaluation.config.base_eval_config`).
      num_classes: K.
      mesh: a mesh with a 'data' axis; batches are sharded over it.
      ignore_label: label value that is not evaluated.
    """
    if DATA_AXIS not in mesh.axis_names:
      raise ValueError(f"The evaluation mesh needs a {DATA_AXIS!r} axis, got {mesh.axis_names}.")
    if int(eval_config.batch_size) < 1:
      raise ValueError(f"eval.batch_size={eval_config.batch_size!r} must be a positive integer.")
    self.eval_config = eval_config
    self.num_classes = num_classes
    self.ignore_label = ignore_label
    self.mesh = mesh
    self._batch_sharding = batch_sharding(mesh)
    self._replicated = replicated(mesh)
    # Rows of the global batch that live on this process: a process's local batch must
    # be a multiple of them (and of the global batch split evenly across processes).
    # name -> uint8 overlay of the images the last evaluate() saved (for TensorBoard).
    self.saved_overlays: dict[str, np.ndarray] = {}
    self._local_multiple = max(mesh.shape[DATA_AXIS] // jax.process_count(), 1)
    local_batch = max(int(eval_config.batch_size) // jax.process_count(), 1)
    self._local_batch = -(-local_batch // self._local_multiple) * self._local_multiple
    predict = functools.partial(
        predict_logits,
        num_classes=num_classes,
        settings=InferenceSettings.from_config(eval_config),
    )

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
    shape = (self._local_batch * jax.process_count(), *image_size)
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

  def _pad(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The process-local batch padded with invalid rows to the fixed local batch size."""
    images = np.asarray(batch["image"], np.float32)
    labels = np.asarray(batch["label"], np.int32)
    count = images.shape[0]
    valid = np.asarray(batch.get("valid", np.ones(count, bool)), bool)
    if labels.shape != images.shape[:3] or valid.shape != (count,):
      raise ValueError(
          f"Eval batch shapes disagree: image {images.shape}, label {labels.shape}, "
          f"valid {valid.shape}; expected (b, h, w, 3), (b, h, w), (b,)."
      )
    target = max(self._local_batch, -(-count // self._local_multiple) * self._local_multiple)
    extra = target - count
    if extra:
      images = np.concatenate([images, np.zeros((extra,) + images.shape[1:], np.float32)])
      labels = np.concatenate(
          [labels, np.full((extra,) + labels.shape[1:], self.ignore_label, np.int32)]
      )
      valid = np.concatenate([valid, np.zeros(extra, bool)])
    return {"image": images, "label": labels, "valid": valid}

  def evaluate(
      self,
      state: Any,
      batches: Iterable[Mapping[str, Any]],
      *,
      out_dir: str | None = None,
      palette: np.ndarray | None = None,
      preprocessing: Preprocessing | None = None,
      num_images_to_save: int | None = None,
  ) -> dict[str, Any]:
    """Metrics over all batches (identical on every process), plus 'confusion' (K x K).

    Process 0 writes PNGs of its first ``num_images_to_save`` valid images to ``out_dir``
    (default count: ``eval_config.num_images_to_save``); that needs the dataset
    ``palette`` and the ``preprocessing`` of the batches' images (to show them as they were).
    """
    if num_images_to_save is None:
      num_images_to_save = int(self.eval_config.get("num_images_to_save", 0))
    save = out_dir is not None and num_images_to_save > 0 and jax.process_index() == 0
    if save and (palette is None or preprocessing is None):
      raise ValueError(
          "Saving eval PNGs needs palette= (DatasetInfo.palette) and preprocessing= (of the"
          " images); pass them or set out_dir=None."
      )
    confusion = jax.device_put(
        jnp.zeros((self.num_classes, self.num_classes), jnp.int32), self._replicated
    )
    saved, num_batches = 0, 0
    self.saved_overlays = {}
    for batch in batches:
      local = self._pad(batch)
      global_arrays = [
          jax.make_array_from_process_local_data(self._batch_sharding, local[key])
          for key in ("image", "label", "valid")
      ]
      confusion, predictions = self._step(state, confusion, *global_arrays)
      num_batches += 1
      if save and saved < num_images_to_save:
        saved += self._save(
            batch,
            local,
            predictions,
            out_dir,
            palette,
            preprocessing,
            num_images_to_save - saved,
        )
    if not num_batches:
      raise ValueError("The evaluation data yielded no batches; check data.eval_split.")
    totals = np.asarray(confusion.addressable_data(0))
    metrics = metrics_from_confusion(totals)
    metrics["confusion"] = totals.tolist()
    return metrics

  def _save(self, batch, local, predictions, out_dir, palette, preprocessing, limit) -> int:
    predictions = np.asarray(
        multihost_utils.global_array_to_host_local_array(predictions, self.mesh, P(DATA_AXIS))
    )
    names = list(batch.get("name", [])) or [f"image_{i}" for i in range(len(local["valid"]))]
    saved = 0
    for i in np.flatnonzero(local["valid"])[:limit]:
      image = preprocessing.denormalize(local["image"][i])
      save_predictions(out_dir, str(names[i]), image, predictions[i], local["label"][i], palette)
      self.saved_overlays[str(names[i])] = overlay(image, colorize(predictions[i], palette))
      saved += 1
    return saved
