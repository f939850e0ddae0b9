"""A TFDS builder for ADEChallengeData2016.zip (the 150-class MIT scene parsing release).

Importing this module registers ``ade20k_challenge2016`` with TFDS. It prepares from the zip in
``manual_dir``; see tfds_sources.py for why the catalogue's ``scene_parse150`` does not serve.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

ADE20K_ZIP = "ADEChallengeData2016.zip"


class Ade20kChallenge2016(tfds.core.GeneratorBasedBuilder):
  """ADE20K scene parsing: JPEG images and single-channel annotations (0 = other, 1..150)."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Place {ADE20K_ZIP} (from http://sceneparsing.csail.mit.edu) in the manual directory."
  )

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="ADE20K / SceneParsing150 (ADEChallengeData2016).",
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "annotation": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                "name": tfds.features.Text(),
            }
        ),
        homepage="http://sceneparsing.csail.mit.edu",
    )

  def _split_generators(self, dl_manager):
    root = dl_manager.extract(dl_manager.manual_dir / ADE20K_ZIP) / "ADEChallengeData2016"
    return {
        "train": self._generate_examples(
            root / "images" / "training", root / "annotations" / "training"
        ),
        "validation": self._generate_examples(
            root / "images" / "validation", root / "annotations" / "validation"
        ),
    }

  def _generate_examples(self, image_dir, label_dir):
    for image_path in sorted(image_dir.glob("*.jpg")):
      name = image_path.name[: -len(".jpg")]
      yield name, {"image": image_path, "annotation": label_dir / f"{name}.png", "name": name}
