"""What a model's description may hold, checked before a network is built from it.

``model.json`` (a model directory) and the ``model`` section of a run's ``config.json`` are
read with :func:`read_json` and checked with :func:`check` against :data:`MODEL` (and
``model.json`` as a whole against :func:`model_file`). Each field has a type and the values it
may take: a set of names, or a range whose bounds keep an absurd value (a recurrence of a
billion loops, a width of a million channels) from hanging or exhausting the build. A wrong type, a value out of range, a
non-finite number, a missing or unknown field, a list where an object belongs: each is one
:class:`UserError` naming the file, the field and what is allowed, never the file's content.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping, Sequence

from ccnet_jax.errors import UserError
from ccnet_jax.models.heads import ATTENTIONS, MAX_RECURRENCE
from ccnet_jax.models.init_schemes import BACKBONE_SCHEMES, HEAD_SCHEMES
from ccnet_jax.models.layers import ACTIVATIONS
from ccnet_jax.models.preprocessing import CHANNEL_ORDERS
from ccnet_jax.models.registry import DTYPES
from ccnet_jax.models.remat import POLICIES
from ccnet_jax.models.resnet import DEPTHS, OUTPUT_STRIDES, STEMS
from ccnet_jax.ops.implementations import criss_cross_implementations

MAX_FILE_BYTES = 1 << 20  # A description is a few KB; anything larger is not one.
MAX_CLASSES = 255  # Labels are 8-bit and 255 is the ignore label.
MAX_CHANNELS = 8192


class Field:
  """A value's type and range; :meth:`problem` says what is wrong with a value, if anything."""

  def describe(self) -> str:
    raise NotImplementedError

  def problem(self, value: Any) -> str | None:
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Choice(Field):
  values: tuple

  def describe(self) -> str:
    return "one of " + ", ".join(json.dumps(v) for v in self.values)

  def problem(self, value):
    ok = any(type(value) is type(v) and value == v for v in self.values)
    return None if ok else self.describe()


@dataclasses.dataclass(frozen=True)
class Integer(Field):
  low: int
  high: int

  def describe(self) -> str:
    return f"an integer from {self.low} to {self.high}"

  def problem(self, value):
    ok = type(value) is int and self.low <= value <= self.high
    return None if ok else self.describe()


@dataclasses.dataclass(frozen=True)
class Number(Field):
  """A finite number in [low, high) (``high`` excluded) or [low, high]."""

  low: float
  high: float
  include_high: bool = True

  def describe(self) -> str:
    bracket = "]" if self.include_high else ")"
    return f"a number in [{self.low:g}, {self.high:g}{bracket}"

  def problem(self, value):
    if type(value) not in (int, float) or not math.isfinite(value):
      return self.describe()
    above = value > self.high if self.include_high else value >= self.high
    return self.describe() if value < self.low or above else None


@dataclasses.dataclass(frozen=True)
class Boolean(Field):

  def describe(self) -> str:
    return "true or false"

  def problem(self, value):
    return None if isinstance(value, bool) else self.describe()


@dataclasses.dataclass(frozen=True)
class Text(Field):
  max_length: int = 200

  def describe(self) -> str:
    return f"a string of at most {self.max_length} characters"

  def problem(self, value):
    ok = isinstance(value, str) and len(value) <= self.max_length
    return None if ok else self.describe()


@dataclasses.dataclass(frozen=True)
class List(Field):
  item: Field
  min_length: int
  max_length: int

  def describe(self) -> str:
    count = (
        str(self.min_length)
        if self.min_length == self.max_length
        else f"{self.min_length} to {self.max_length}"
    )
    return f"a list of {count} items, each {self.item.describe()}"

  def problem(self, value):
    if not isinstance(value, list) or not self.min_length <= len(value) <= self.max_length:
      return self.describe()
    return self.describe() if any(self.item.problem(v) for v in value) else None


@dataclasses.dataclass(frozen=True)
class Nullable(Field):
  field: Field

  def describe(self) -> str:
    return f"null or {self.field.describe()}"

  def problem(self, value):
    return None if value is None or not self.field.problem(value) else self.describe()


@dataclasses.dataclass(frozen=True)
class Omissible:
  """A field that may be left out: one added after model directories were first written,
  which only training reads (the defaults of ``registry.base_model_config`` then apply)."""

  field: Field | Mapping


def _names(table) -> tuple:
  return tuple(sorted(table))


_FRACTION = Number(0.0, 1.0, include_high=False)
_CHANNELS = Integer(1, MAX_CHANNELS)

# A model ConfigDict (``registry.base_model_config``) as JSON.
MODEL = {
    "name": Text(),
    "num_classes": Integer(1, MAX_CLASSES),
    "dtype": Choice(_names(DTYPES)),
    "cca_impl": Choice(criss_cross_implementations() + ("auto",)),
    "remat": Omissible(Choice(_names(POLICIES))),
    "bn_fast_variance": Omissible(Boolean()),
    "init": Omissible(
        {"backbone": Choice(_names(BACKBONE_SCHEMES)), "head": Choice(_names(HEAD_SCHEMES))}
    ),
    "backbone": {
        "depth": Choice(_names(DEPTHS)),
        "stem": Choice(_names(STEMS)),
        "output_stride": Choice(_names(OUTPUT_STRIDES)),
        "multi_grid": Nullable(List(Integer(1, 16), 1, 8)),
        "contract_dilation": Boolean(),
        "ceil_mode": Nullable(Boolean()),
        "base_width": Integer(1, 1024),
    },
    "head": {
        "attention": Choice(_names(ATTENTIONS)),
        "recurrence": Integer(0, MAX_RECURRENCE),
        "channels": Nullable(_CHANNELS),
        "out_channels": _CHANNELS,
        "activation": Choice(_names(ACTIVATIONS)),
        "dropout": _FRACTION,
    },
    "aux": {
        "enabled": Boolean(),
        "channels": _CHANNELS,
        "use_bias": Boolean(),
        "activation": Choice(_names(ACTIVATIONS)),
        "dropout": _FRACTION,
    },
}

PREPROCESSING = {
    "channel_order": Choice(CHANNEL_ORDERS),
    "mean": List(Number(-1e4, 1e4), 3, 3),
    "std": List(Number(1e-6, 1e4), 3, 3),
}


def model_file(format_name: str, parts: Sequence[str]) -> dict:
  """The schema of ``model.json``: its format, which arrays it covers, model, preprocessing."""
  return {
      "format": Choice((format_name,)),
      "part": Choice(tuple(parts)),
      "model": MODEL,
      "preprocessing": PREPROCESSING,
  }


def _shown(value: Any) -> str:
  """A value short enough for one line; containers by their kind only."""
  if isinstance(value, Mapping):
    return "an object"
  if isinstance(value, list):
    return "a list"
  text = json.dumps(value) if isinstance(value, (str, bool, int, float)) or value is None else ""
  return text if len(text) <= 40 else text[:37] + "..."


def check(values: Any, schema: Mapping, where: str, prefix: str = "") -> None:
  """Raises a UserError naming ``where`` (the file), the first field of ``values`` that
  ``schema`` refuses and what it allows."""
  if not isinstance(values, Mapping):
    name = prefix.rstrip(".") or "the file"
    raise UserError(f"{where}: {name} is {_shown(values)}; allowed: an object (a JSON mapping).")
  unknown = sorted(set(values) - set(schema))
  if unknown:
    raise UserError(
        f"{where}: unknown field {prefix}{unknown[0]}; allowed fields of"
        f" {prefix.rstrip('.') or 'the file'}: {', '.join(schema)}."
    )
  for name, rule in schema.items():
    field = f"{prefix}{name}"
    optional = isinstance(rule, Omissible)
    rule = rule.field if optional else rule
    if name not in values:
      if optional:
        continue
      raise UserError(f"{where}: the field {field} is missing; it must be given.")
    if isinstance(rule, Mapping):
      check(values[name], rule, where, field + ".")
    elif (allowed := rule.problem(values[name])) is not None:
      raise UserError(f"{where}: {field} is {_shown(values[name])}; allowed: {allowed}.")


def _no_constants(name: str):
  raise ValueError(f"{name} is not a JSON number")


def read_json(path: str | os.PathLike, what: str) -> Any:
  """The JSON value of the file ``path``; one UserError (naming the file and ``what`` it should
  be) if it is too large, not JSON, or nested too deeply. Its content is never quoted."""
  path = os.fspath(path)
  try:
    size = os.path.getsize(path)
    if size > MAX_FILE_BYTES:
      raise UserError(
          f"{path} holds {size} bytes, more than a {what} can ({MAX_FILE_BYTES}); restore the"
          " file."
      )
    with open(path, encoding="utf-8") as f:
      return json.load(f, parse_constant=_no_constants)
  except json.JSONDecodeError as error:
    raise UserError(
        f"{path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg});"
        f" it must be a {what}."
    ) from None
  except (ValueError, UnicodeDecodeError) as error:
    reason = "it is not UTF-8 text" if isinstance(error, UnicodeDecodeError) else str(error)
    raise UserError(f"{path} is not valid JSON ({reason}); it must be a {what}.") from None
  except RecursionError:
    raise UserError(f"{path} is nested too deeply to be a {what}.") from None
