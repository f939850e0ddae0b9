"""Independent numpy references for the attention operators (explicit loops).

float64 by default, the truth; ``dtype=np.float32`` runs the same loops in float32, whose
distance from the truth is the float32 rounding an implementation is compared with
(tests/numerics.py).
"""

import numpy as np


def criss_cross_neighbours(height: int, width: int, h: int, w: int) -> list[tuple[int, int]]:
  """The H + W - 1 pixels that (h, w) attends to: its column without itself, then its row."""
  column = [(g, w) for g in range(height) if g != h]
  row = [(h, u) for u in range(width)]
  return column + row


def softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max())
  return e / e.sum()


def criss_cross_attention(q, k, v, *, return_attention=False, dtype=np.float64):
  """For each pixel: gather its criss-cross neighbours, softmax by hand, weigh v."""
  q, k, v = (np.asarray(a, dtype) for a in (q, k, v))
  batch, height, width, _ = q.shape
  out = np.zeros(v.shape, dtype)
  attention = np.zeros((batch, height, width, height + width), dtype)
  for b in range(batch):
    for h in range(height):
      for w in range(width):
        neighbours = criss_cross_neighbours(height, width, h, w)
        energies = np.array([q[b, h, w] @ k[b, g, u] for g, u in neighbours])
        weights = softmax(energies)
        out[b, h, w] = sum(a * v[b, g, u] for a, (g, u) in zip(weights, neighbours))
        # Lay the weights out as [column (H entries, own entry 0), row (W entries)].
        column_slots = [g for g in range(height) if g != h]
        attention[b, h, w, column_slots] = weights[: height - 1]
        attention[b, h, w, height:] = weights[height - 1 :]
  return (out, attention) if return_attention else out


def non_local_attention(q, k, v, *, dtype=np.float64):
  """softmax over all H * W pixels, one pixel at a time."""
  q, k, v = (np.asarray(a, dtype) for a in (q, k, v))
  batch, height, width, _ = q.shape
  keys = k.reshape(batch, height * width, -1)
  values = v.reshape(batch, height * width, -1)
  out = np.zeros(v.shape, dtype)
  for b in range(batch):
    for h in range(height):
      for w in range(width):
        weights = softmax(keys[b] @ q[b, h, w])
        out[b, h, w] = weights @ values[b]
  return out
