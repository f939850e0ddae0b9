"""Outputs are whole or absent: a failure (or Ctrl-C) inside a write leaves the final name as it
was and no temporary behind; a folder is replaced whole, or refused when it holds files."""

import os

import pytest

from ccnet_jax import atomic
from ccnet_jax.errors import UserError


def listing(folder):
  return sorted(os.listdir(folder))


def test_a_file_appears_only_when_complete(tmp_path):
  path = tmp_path / "out" / "labels.png"
  with atomic.writing(path) as temporary:
    assert temporary.endswith(".png") and atomic.is_partial(temporary)
    with open(temporary, "w") as f:
      f.write("half")
      assert not path.exists()
      f.write(" and half")
  assert path.read_text() == "half and half"
  assert listing(tmp_path / "out") == ["labels.png"]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_write_that_fails_leaves_the_previous_file_and_no_temporary(tmp_path, error):
  path = tmp_path / "labels.png"
  path.write_text("previous")
  with pytest.raises(type(error)):
    with atomic.writing(path) as temporary:
      with open(temporary, "w") as f:
        f.write("half")
      raise error
  assert path.read_text() == "previous"
  assert listing(tmp_path) == ["labels.png"]


def test_a_folder_holding_files_is_refused_unless_overwrite_then_replaced_whole(tmp_path):
  out = tmp_path / "export"
  out.mkdir()
  (out / "model.mlir").write_text("the user's")
  with pytest.raises(FileExistsError, match=r"export is not empty; .* --overwrite"):
    with atomic.replacing_directory(out, overwrite=False):
      pytest.fail("the block must not run")
  assert listing(out) == ["model.mlir"]
  with atomic.replacing_directory(out, overwrite=True) as staging:
    (open(os.path.join(staging, "serving.json"), "w")).close()
    assert listing(out) == ["model.mlir"]  # Untouched until the new folder is whole.
  assert listing(out) == ["serving.json"]
  assert listing(tmp_path) == ["export"]


def test_an_empty_folder_is_filled_and_a_file_in_the_way_is_named(tmp_path):
  (tmp_path / "empty").mkdir()
  with atomic.replacing_directory(tmp_path / "empty", overwrite=False) as staging:
    (open(os.path.join(staging, "a"), "w")).close()
  assert listing(tmp_path / "empty") == ["a"]
  (tmp_path / "file").write_text("x")
  with pytest.raises(FileExistsError, match="file exists and is not a folder"):
    atomic.check_replaceable(tmp_path / "file", overwrite=True)


def test_a_failed_folder_leaves_the_old_one(tmp_path):
  out = tmp_path / "export"
  out.mkdir()
  (out / "old").write_text("kept")
  with pytest.raises(RuntimeError):
    with atomic.replacing_directory(out, overwrite=True) as staging:
      (open(os.path.join(staging, "new"), "w")).close()
      raise RuntimeError("the exporter failed")
  assert listing(out) == ["old"] and listing(tmp_path) == ["export"]


def test_what_a_signal_handler_discards(tmp_path):
  """``discard_in_flight`` (the signal handler's cleanup) deletes the temporaries being written
  and puts back a folder renamed aside for its replacement."""
  file_path = tmp_path / "a.png"
  writing = atomic.writing(file_path)
  temporary = writing.__enter__()
  with open(temporary, "w") as f:
    f.write("half")
  out = tmp_path / "export"
  out.mkdir()
  (out / "old").write_text("kept")
  aside = atomic.temporary_name(out)
  os.replace(out, aside)  # The instant between the two renames of a replacement.
  atomic._retired[aside] = str(out)  # pylint: disable=protected-access
  atomic.discard_in_flight()
  assert listing(tmp_path) == ["export"] and listing(out) == ["old"]


def test_an_output_folder_below_a_file_is_named_before_any_work(tmp_path):
  blocker = tmp_path / "notes.txt"
  blocker.write_text("the user's", encoding="utf-8")
  for check in (
      lambda path: atomic.make_folder(path, "--out"),
      lambda path: atomic.check_replaceable(path, overwrite=True),
  ):
    with pytest.raises(UserError, match=f"below {blocker}, which is a file; name a folder"):
      check(blocker / "a" / "b")
  with pytest.raises(UserError, match="is a file; name a folder for the outputs"):
    atomic.make_folder(blocker)
  assert sorted(os.listdir(tmp_path)) == ["notes.txt"]
  atomic.make_folder(tmp_path / "new" / "out")
  assert os.path.isdir(tmp_path / "new" / "out")
