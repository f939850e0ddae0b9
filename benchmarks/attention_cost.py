"""GFLOPs and memory that attention adds to the CCNet head, from XLA's own analyses.

Reproduces the paper's comparison (Table: non-local vs RCCA on the 97x97 map of a
769x769 Cityscapes crop, 2048 -> 512 channels): every figure is the increment of
a compiled program over the same head without attention (the FCN baseline),
read from ``compiled.cost_analysis()`` and ``compiled.memory_analysis()``. Nothing
is executed, so the large non-local maps cost only compilation time.

  python benchmarks/attention_cost.py              # the paper's setting + growth
  python benchmarks/attention_cost.py --sizes 33,65 --batch 1
"""

from __future__ import annotations

import argparse

from xla_analysis import Cost, program_cost  # Before jax: configures XLA on CPU.

# isort: split

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ccnet_jax.models.heads import RCCAHead

IN_FEATURES = 2048
NUM_CLASSES = 19

# The paper (TPAMI, Table "comparison with non-local"): increments over the baseline.
PAPER = {"non_local": (108.0, 1411.0), "criss_cross R=2": (16.5, 127.0)}


def _head(attention: str, recurrence: int, cca_impl: str = "einsum") -> RCCAHead:
  extra = {"cca_impl": cca_impl} if attention == "criss_cross" else {}
  return RCCAHead(
      IN_FEATURES,
      NUM_CLASSES,
      attention=attention,
      recurrence=recurrence,
      rngs=nnx.Rngs(0),
      **extra,
  )


def head_cost(
    attention: str,
    recurrence: int,
    size: int,
    batch: int,
    training: bool,
    cca_impl: str = "einsum",
) -> Cost:
  """Cost of one inference pass, or of one SGD step, of the head on a size x size map."""
  head = nnx.eval_shape(lambda: _head(attention, recurrence, cca_impl))
  graphdef, params, rest = nnx.split(head, nnx.Param, ...)
  features = jax.ShapeDtypeStruct((batch, size, size, IN_FEATURES), jnp.float32)
  labels = jax.ShapeDtypeStruct((batch, size, size), jnp.int32)

  if not training:

    def infer(params, rest, features):
      model = nnx.merge(graphdef, params, rest)
      model.eval()
      return model(features)

    return program_cost(infer, params, rest, features)

  optimizer = optax.sgd(1e-2, momentum=0.9)
  opt_state = jax.eval_shape(optimizer.init, params)

  def train_step(params, rest, opt_state, features, labels):
    def loss_fn(params, rest):
      # copy=True: fresh Variables at this trace level, so BatchNorm may update them.
      model = nnx.merge(graphdef, params, rest, copy=True)
      logits = model(features)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, nnx.state(model, nnx.BatchStat)

    grads, batch_stats = jax.grad(loss_fn, has_aux=True)(params, rest)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state

  return program_cost(train_step, params, rest, opt_state, features, labels)


def increments(size: int, batch: int, training: bool) -> dict[str, Cost]:
  baseline = head_cost("none", 0, size, batch, training)
  variants = {"non_local": ("non_local", 1)}
  variants.update({f"criss_cross R={r}": ("criss_cross", r) for r in (1, 2, 3)})
  result = {}
  for name, (attention, recurrence) in variants.items():
    cost = head_cost(attention, recurrence, size, batch, training)
    result[name] = cost - baseline
  return result


def paper_table(batch: int) -> str:
  inference = increments(97, batch, training=False)
  training = increments(97, batch, training=True)
  lines = [
      f"Increment over the head without attention: 97x97 map, {IN_FEATURES} -> 512"
      f" channels, batch {batch}, {jax.default_backend()} XLA analysis.",
      "",
      "| attention | GFLOPs (inference) | GFLOPs (training step) | memory MB (inference)"
      " | memory MB (training step) | paper GFLOPs | paper memory MB |",
      "|---|---:|---:|---:|---:|---:|---:|",
  ]
  for name in inference:
    paper_flops, paper_memory = PAPER.get(name, (None, None))
    paper = f"{paper_flops:.1f} | {paper_memory:.0f}" if paper_flops else " | "
    lines.append(
        f"| {name} | {inference[name].gflops:.1f} | {training[name].gflops:.1f}"
        f" | {inference[name].memory_mb:.0f} | {training[name].memory_mb:.0f} | {paper} |"
    )
  return "\n".join(lines)


def growth_table(sizes: list[int], batch: int) -> str:
  lines = [
      f"Growth with the map size (training step, batch {batch}): increments over the head"
      " without attention.",
      "",
      "| map | non-local GFLOPs | RCCA R=2 GFLOPs | ratio | non-local MB | RCCA R=2 MB | ratio |",
      "|---|---:|---:|---:|---:|---:|---:|",
  ]
  for size in sizes:
    costs = increments(size, batch, training=True)
    nl, cc = costs["non_local"], costs["criss_cross R=2"]
    lines.append(
        f"| {size}x{size} | {nl.gflops:.1f} | {cc.gflops:.1f} | {nl.gflops / cc.gflops:.1f}"
        f" | {nl.memory_mb:.0f} | {cc.memory_mb:.0f} | {nl.memory_mb / cc.memory_mb:.1f} |"
    )
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--sizes", default="33,65,97,129,161", help="map sizes for growth")
  args = parser.parse_args()
  print(paper_table(args.batch))
  print()
  print(growth_table([int(s) for s in args.sizes.split(",")], args.batch))


if __name__ == "__main__":
  main()
