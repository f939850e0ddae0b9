"""A model directory or a run's config.json is checked whole before a network is built: each fault
is one UserError naming the file, the field and what is allowed, never the file's content."""

import json
import os
import shutil

import pytest

from ccnet_jax.errors import UserError
from ccnet_jax.loading import load_model
from ccnet_jax.models import model_dir, schema
from ccnet_jax.training.workdir import saved_config

SECRET = "root:x:0:0:secret-content"


@pytest.fixture
def directory(saved_model, tmp_path):
  """A copy of the session's saved model, to damage."""
  copy = tmp_path / "model"
  shutil.copytree(saved_model.directory, copy)
  return copy


def description(directory):
  with open(directory / model_dir.INFO_FILE, encoding="utf-8") as f:
    return json.load(f)


def refused(path, match):
  with pytest.raises(UserError) as error:
    load_model(path)
  message = str(error.value)
  assert "\n" not in message and os.fspath(path) in message, message
  assert SECRET not in message, message
  assert match in message, message
  return message


def changed(info, field, value):
  """``info`` with the dotted ``field`` set to ``value`` (deleted when value is ...)."""
  *parents, name = field.split(".")
  holder = info
  for parent in parents:
    holder = holder[parent]
  if value is ...:
    del holder[name]
  else:
    holder[name] = value
  return info


@pytest.mark.parametrize(
    "field, value, match",
    [
        (
            "model.head.recurrence",
            10**9,
            "model.head.recurrence is 1000000000; allowed: an integer from 0 to 16",
        ),
        ("model.head.recurrence", "2", 'model.head.recurrence is "2"; allowed: an integer'),
        ("model.num_classes", 0, "model.num_classes is 0; allowed: an integer from 1 to 255"),
        ("model.backbone.base_width", 8.0, "model.backbone.base_width is 8.0"),
        ("model.backbone.depth", ..., "the field model.backbone.depth is missing"),
        ("model.head.extra", 1, "unknown field model.head.extra"),
        ("model.backbone", [], "model.backbone is a list; allowed: an object"),
        ("preprocessing.mean", [1.0, 2.0], "preprocessing.mean is a list; allowed: a list of 3"),
        (
            "preprocessing.std",
            [0.0, 1.0, 1.0],
            "allowed: a list of 3 items, each a number in [1e-06",
        ),
        ("format", "v9", 'format is "v9"; allowed: one of'),
    ],
)
def test_a_bad_field_is_named_with_what_is_allowed(directory, field, value, match):
  info = changed(description(directory), field, value)
  (directory / model_dir.INFO_FILE).write_text(json.dumps(info), encoding="utf-8")
  refused(directory, match)


@pytest.mark.parametrize(
    "text, match",
    [
        ("{" + SECRET, "is not valid JSON (line 1, column 2"),
        ('{"a": NaN}', "is not valid JSON (NaN is not a JSON number)"),
        ("[" * 100_000 + "]" * 100_000, "is nested too deeply"),
        ("[]", "the file is a list; allowed: an object"),
        (" " * (schema.MAX_FILE_BYTES + 1) + "{}", "more than a model description"),
    ],
)
def test_a_file_that_is_no_description_is_named(directory, text, match):
  (directory / model_dir.INFO_FILE).write_text(text, encoding="utf-8")
  refused(directory, match)


def test_an_infinite_number_is_refused(directory):
  text = json.dumps(description(directory)).replace('"dropout": 0.1', '"dropout": 1e999', 1)
  assert "1e999" in text
  (directory / model_dir.INFO_FILE).write_text(text, encoding="utf-8")
  refused(directory, "dropout is Infinity; allowed: a number in [0, 1)")


def test_links_that_leave_the_directory_are_refused_without_reading_them(directory, tmp_path):
  outside = tmp_path / "passwd"
  outside.write_text(SECRET, encoding="utf-8")
  info = directory / model_dir.INFO_FILE
  inside = directory / "description.json"
  os.replace(info, inside)
  os.symlink(inside, info)  # A link inside the directory is the directory's own file.
  assert load_model(directory).num_classes > 0
  os.remove(info)
  os.symlink(outside, info)
  refused(directory, "is a symbolic link to")
  os.remove(info)
  os.replace(inside, info)
  os.symlink(tmp_path / "nowhere", directory / "params" / "extra")
  refused(directory, "outside the model directory")


def test_damaged_weights_are_named_by_the_kind_of_error_only(directory):
  for root, _, files in os.walk(directory / "params"):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 64:
        with open(path, "r+b") as f:
          f.truncate(16)
  refused(directory, "cannot be read (")


def test_a_runs_config_that_is_no_config_is_named(tmp_path):
  """eval.py and predict.py rebuild a checkpoint's network from WORKDIR/config.json."""
  (tmp_path / "checkpoints" / "1").mkdir(parents=True)
  config = tmp_path / "config.json"
  config.write_text("[1, 2]", encoding="utf-8")
  with pytest.raises(UserError, match="holds a JSON list, not the object of a run's config"):
    saved_config(str(tmp_path))
  refused(tmp_path, "config.json holds a JSON list")
  config.write_text(json.dumps({"model": {"name": "x"}, "data": {}}), encoding="utf-8")
  refused(tmp_path, "config.json: the field model.num_classes is missing")
