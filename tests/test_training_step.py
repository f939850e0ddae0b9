"""The sharded train step: sync BN across 8 devices and 2 processes, bfloat16, state round trip.

Reference for sharding: the same step on a 1-device mesh with the whole batch. The sharded
step sums in another order (across devices), so it is compared with the step in float64 and
allowed FACTOR x the 1-device float32 step's error (tests/numerics.py); measured up to
1.4x. Synchronised BatchNorm done per device instead errs by the spread of the images'
statistics, far beyond.
"""

import pickle

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ccnet_jax.models import layers
from ccnet_jax.models.preprocessing import IMAGENET, OFFICIAL
from ccnet_jax.training.mesh import global_batch, make_mesh, replicate
from ccnet_jax.training.state import merge_model
from ccnet_jax.training.step import make_train_step, normalize_images
from tests import distributed_worker as worker
from tests import numerics
from tests.helpers import ROOT
from tests.processes import HANG_TIMEOUT

FACTOR = 4
BFLOAT16_FACTOR = 4  # BN statistics: measured up to 0.033x, both configurations.
BFLOAT16_SCALARS_FACTOR = 16  # Measured up to 3.2x (default flags), 4.1x (fast math).


def _host(tree):
  return jax.device_get(tree)


class _Run:
  """A compiled step on a mesh, started from the fixed initial state."""

  def __init__(self, devices, dtype="float32", preprocessing=None, weights=None):
    self.model_def, self.tx, self.schedule, self.initial = worker.build(dtype, weights)
    self.mesh = make_mesh(devices)
    train_step = make_train_step(
        self.model_def, self.tx, self.schedule, worker.loss_config(), self.mesh, preprocessing
    )
    example = worker.fixed_batch() if preprocessing is None else _loader_batch()
    # Compiled ahead of time with the same shardings; only backend optimisation is cut.
    self.step = train_step.lower(
        replicate(self.initial, self.mesh), global_batch(example, self.mesh)
    ).compile(worker.FAST_COMPILE)

  def run(self, steps, batch=None, state=None):
    """Host copies of the state after each step, and the metrics of each step."""
    state = replicate(self.initial if state is None else state, self.mesh)
    batch = global_batch(worker.fixed_batch() if batch is None else batch, self.mesh)
    states, metrics = [], []
    for _ in range(steps):
      state, step_metrics = self.step(state, batch)
      states.append(_host(state))
      metrics.append({k: float(v) for k, v in step_metrics.items()})
    return states, metrics


def _loader_batch() -> dict[str, np.ndarray]:
  """A batch as the loader gives it: uint8 RGB crops, each with the box of its image pixels
  (whole, padded below, padded on the right, flipped with the padding on the left, ...)."""
  size = worker.SIZE
  rng = np.random.default_rng(1)
  boxes = np.array(
      [[0, 0, size, size], [0, 0, size - 5, size], [0, 0, size, size - 7], [0, 9, size - 2, size]]
      * (worker.BATCH // 4),
      np.int32,
  )
  images = rng.integers(0, 256, (worker.BATCH, size, size, 3)).astype(np.uint8)
  return {"image": images, "label": worker.fixed_batch()["label"], "image_box": boxes}


def _normalised_on_host(batch: dict, preprocessing) -> dict:
  """The float batch the loader used to give: host normalisation, 0 outside the box."""
  images = []
  for image, (top, left, bottom, right) in zip(batch["image"], batch["image_box"]):
    out = np.zeros(image.shape, np.float32)
    out[top:bottom, left:right] = preprocessing.normalize(image[top:bottom, left:right])
    images.append(out)
  return {"image": np.stack(images), "label": batch["label"]}


@pytest.mark.parametrize("preprocessing", [OFFICIAL, IMAGENET])
def test_normalising_on_device_is_host_normalisation(preprocessing):
  """Bit for bit without std (the official recipe); with one, XLA may multiply by 1 / std,
  one float32 rounding away from dividing."""
  batch = _loader_batch()
  normalize = jax.jit(lambda images, boxes: normalize_images(images, boxes, preprocessing))
  got = np.asarray(normalize(batch["image"], batch["image_box"]))
  want = _normalised_on_host(batch, preprocessing)["image"]
  np.testing.assert_array_equal(got == 0, want == 0)
  np.testing.assert_array_max_ulp(got, want, maxulp=0 if preprocessing.std == (1, 1, 1) else 1)


def test_normalising_in_the_step_gives_the_step_on_the_normalised_batch(one_device):
  """The loader's uint8 batch normalised in the step trains exactly as the float batch."""
  batch = _loader_batch()
  in_step = _Run(jax.devices()[:1], preprocessing=OFFICIAL)
  states, metrics = in_step.run(1, batch=batch)
  want_states, want_metrics = one_device.run(1, batch=_normalised_on_host(batch, OFFICIAL))
  assert metrics == want_metrics
  chex.assert_trees_all_equal(states[0].params, want_states[0].params)
  chex.assert_trees_all_equal(states[0].batch_stats, want_states[0].batch_stats)


@pytest.fixture(scope="module")
def one_device():
  return _Run(jax.devices()[:1])


@pytest.fixture(scope="module")
def reference(one_device):
  """Three steps on one device with the whole batch."""
  return one_device.run(3)


@pytest.fixture(scope="module")
def truth():
  """The reference's three steps in float64, from the same weights (numpy)."""
  with jax.enable_x64(True):
    weights = jax.tree.map(lambda x: np.asarray(x, np.float64), worker.initial_weights())
    states, metrics = _Run(jax.devices()[:1], "float64", weights=weights).run(3)
    return jax.tree.map(np.asarray, states), metrics


def _outcome(run, step):
  """Parameters, statistics, loss and gradient norm after ``step`` steps of ``run``."""
  states, metrics = run
  state, metric = states[step - 1], metrics[step - 1]
  return {
      "params": state.params,
      "batch_stats": state.batch_stats,
      "loss": metric["loss"],
      "grad_norm": metric["grad_norm"],
  }


def test_step_trains_and_reports_metrics(one_device, reference):
  states, metrics = reference
  assert [int(s.step) for s in states] == [1, 2, 3]
  assert set(metrics[0]) == {"loss", "main", "aux", "lr", "grad_norm", "finite"}
  # float32 main + 0.4 * aux: three roundings (0.4, the product, the sum) of positive terms.
  np.testing.assert_allclose(
      metrics[0]["loss"],
      metrics[0]["main"] + 0.4 * metrics[0]["aux"],
      rtol=3 * numerics.UNIT_ROUNDOFF,
  )
  expected_lr = [0.01 * (1 - i / 10) ** 0.9 for i in range(3)]
  np.testing.assert_allclose([m["lr"] for m in metrics], expected_lr, rtol=1e-6)
  assert all(m["finite"] == 1.0 for m in metrics)
  assert metrics[2]["loss"] < metrics[0]["loss"]  # the same batch three times: it fits
  # BN running statistics moved from their initial values (mean 0, var 1).
  initial_stats = jax.tree.leaves(one_device.initial.batch_stats)
  assert any(
      not np.allclose(a, b) for a, b in zip(initial_stats, jax.tree.leaves(states[0].batch_stats))
  )


def test_sync_batch_norm_eight_devices_equal_one_device(reference, truth):
  eight = _Run(jax.devices()[:8])
  assert len(eight.mesh.devices.flat) == 8
  numerics.assert_as_accurate_as(
      _outcome(eight.run(1), 1), _outcome(reference, 1), _outcome(truth, 1), factor=FACTOR
  )


def test_statistics_are_global_not_per_device(one_device, reference, truth):
  """The first BN layer's running mean moved by 0.1 x the whole batch's mean, not one image's.

  The running mean after one step is 0.9 * 0 + 0.1 * batch mean; numpy's float32 mean of
  the layer's input over the whole batch is the independent float32 reference.
  """
  model = merge_model(one_device.model_def, one_device.initial, train=True)
  images = jnp.asarray(worker.fixed_batch()["image"])
  conv_out = np.asarray(model.backbone.stem.conv1(images))
  whole = np.float32(0.1) * conv_out.mean(axis=(0, 1, 2), dtype=np.float32)
  per_image = np.float32(0.1) * conv_out[:1].mean(axis=(0, 1, 2), dtype=np.float32)
  bn1 = lambda run: run[0][0].batch_stats["backbone"]["stem"]["bn1"]["mean"]
  numerics.assert_as_accurate_as(bn1(reference), whole, bn1(truth), factor=FACTOR)
  assert numerics.error_ratios(per_image, whole, bn1(truth))["<tree>"] > 1e3 * FACTOR


def test_same_state_and_batch_give_the_same_step(one_device, reference):
  """Dropout keys come from (rng, step): a resumed step redraws the same masks."""
  states, metrics = one_device.run(1, state=reference[0][0])
  # The same compiled program on the same inputs: CPU execution is deterministic.
  assert metrics[0]["loss"] == reference[1][1]["loss"]
  chex.assert_trees_all_equal(states[0].params, reference[0][1].params)


def test_non_finite_loss_is_flagged(one_device):
  batch = worker.fixed_batch()
  batch["image"][0, 0, 0, 0] = np.nan
  _, metrics = one_device.run(1, batch=batch)
  assert metrics[0]["finite"] == 0.0


def test_merge_model_carries_the_state_and_the_mode(one_device, reference):
  state = reference[0][0]
  for train in (True, False):
    model = merge_model(one_device.model_def, state, train=train)
    chex.assert_trees_all_equal(nnx.to_pure_dict(nnx.state(model, nnx.Param)), state.params)
    chex.assert_trees_all_equal(
        nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)), state.batch_stats
    )
    norms = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.BatchNorm)]
    dropouts = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Dropout)]
    assert len(norms) > 20 and len(dropouts) == 2
    assert {m.use_running_average for m in norms} == {not train}
    assert {m.deterministic for m in dropouts} == {not train}


def test_bfloat16_step_keeps_float32_params_and_statistics(truth):
  """bfloat16 activations, float32 parameters and statistics.

  The step is held to the float64 step, in units of one rounding of the true values to
  bfloat16: the first BN layer's running statistics (BFLOAT16_FACTOR), the loss and the
  gradient norm (BFLOAT16_SCALARS_FACTOR: the gradients flow back through every layer's
  bfloat16 activations).
  """
  bf16 = _Run(jax.devices()[:1], dtype="bfloat16")
  states, metrics = bf16.run(1)
  dtypes = {x.dtype for x in jax.tree.leaves((states[0].params, states[0].batch_stats))}
  assert dtypes == {np.dtype(np.float32)}
  assert metrics[0]["finite"] == 1.0
  # The loss is computed in float32 from the bfloat16 logits: a loss whose last operation ran
  # in bfloat16 would be exactly a bfloat16 number, which a float32 result is with
  # probability 2**-16.
  loss = metrics[0]["loss"]
  assert float(jnp.asarray(loss, jnp.bfloat16)) != np.float32(loss)

  # The first BN layer's running statistics: bfloat16 activations averaged in float32 err by
  # a small fraction of one bfloat16 rounding (the float32 reduction itself is held to
  # float64 in test_bfloat16_batch_norm_reduces_in_float32).
  bn1 = lambda states: states[0].batch_stats["backbone"]["stem"]["bn1"]
  statistics = lambda states: {"mean": bn1(states)["mean"], "var": bn1(states)["var"]}
  true = statistics(truth[0])
  bfloat16_rounding = jax.tree.map(
      lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64), true
  )
  numerics.assert_as_accurate_as(
      statistics(states), bfloat16_rounding, true, factor=BFLOAT16_FACTOR, err_msg="BN stats"
  )
  # Two scalars: a single rounding of each may be exact by chance, so their budget is its
  # bound, 2^-9 of the true value.
  scalars = lambda metrics: (metrics[0]["loss"], metrics[0]["grad_norm"])
  true = np.array(scalars(truth[1]))
  numerics.assert_as_accurate_as(
      np.array(scalars(metrics)),
      true * (1 + 2.0**-9),
      true,
      factor=BFLOAT16_SCALARS_FACTOR,
      err_msg="loss and gradient norm",
  )


@pytest.mark.numeric
def test_bfloat16_batch_norm_reduces_in_float32():
  """The model's BN layer on bfloat16 input: statistics equal float64 ones of that input."""
  norm = layers.batch_norm(3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(3.0, 1.0, size=(4, 32, 32, 3)), jnp.bfloat16)
  y = norm(x)
  assert y.dtype == jnp.bfloat16 and norm.mean[...].dtype == jnp.float32
  # momentum 0.9 from mean 0 / var 1; the running variance is the unbiased one, as torch's.
  # numpy's float32 statistics of the same input are the float32 reference.
  n = 4 * 32 * 32

  def running(x, dtype):
    x = np.asarray(x, dtype)
    momentum, unbiased = dtype(0.1), dtype(n / (n - 1))
    mean, var = x.mean(axis=(0, 1, 2), dtype=dtype), x.var(axis=(0, 1, 2), dtype=dtype)
    return momentum * mean, dtype(0.9) + momentum * var * unbiased

  numerics.assert_as_accurate_as(
      (norm.mean[...], norm.var[...]),
      running(x, np.float32),
      running(x, np.float64),
      factor=FACTOR,
  )


def test_two_processes_train_like_one(reference, truth, tmp_path):
  weights = tmp_path / "weights.pkl"
  weights.write_bytes(pickle.dumps(worker.initial_weights()))
  # Two host devices per process: a 4-device mesh over 2 processes.
  port = worker.free_port()
  outputs = worker.run_processes(
      "tests.distributed_worker",
      [
          [
              f"--process_id={i}",
              "--num_processes=2",
              f"--port={port}",
              "--steps=3",
              f"--weights={weights}",
          ]
          for i in range(2)
      ],
      repo=ROOT,
      timeout=HANG_TIMEOUT,
  )
  assert [o["global_devices"] for o in outputs] == [4, 4]
  summary = lambda states, metrics: {
      "losses": [m["loss"] for m in metrics],
      "checksum": worker.params_checksum(states[2].params),
  }
  for output in outputs:
    got = {"losses": output["losses"], "checksum": output["checksum"]}
    numerics.assert_as_accurate_as(
        got, summary(*reference), summary(*truth), factor=FACTOR, err_msg="4 scalars"
    )
