"""Class names, palettes and label-id -> train-id tables of the supported datasets."""

from __future__ import annotations

import dataclasses

import numpy as np

IGNORE_LABEL = 255


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What evaluation and visualisation need to know about a dataset's classes."""

  name: str
  class_names: tuple[str, ...]
  palette: np.ndarray  # (num_classes, 3) uint8, RGB.
  ignore_label: int = IGNORE_LABEL

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


# Cityscapes (cityscapesscripts/helpers/labels.py): (label id, train id, name, RGB colour) of
# the 34 ids that appear in *_gtFine_labelIds.png. Ids with train id 255 are not evaluated.
_CITYSCAPES_LABELS = (
    (0, 255, "unlabeled", (0, 0, 0)),
    (1, 255, "ego vehicle", (0, 0, 0)),
    (2, 255, "rectification border", (0, 0, 0)),
    (3, 255, "out of roi", (0, 0, 0)),
    (4, 255, "static", (0, 0, 0)),
    (5, 255, "dynamic", (111, 74, 0)),
    (6, 255, "ground", (81, 0, 81)),
    (7, 0, "road", (128, 64, 128)),
    (8, 1, "sidewalk", (244, 35, 232)),
    (9, 255, "parking", (250, 170, 160)),
    (10, 255, "rail track", (230, 150, 140)),
    (11, 2, "building", (70, 70, 70)),
    (12, 3, "wall", (102, 102, 156)),
    (13, 4, "fence", (190, 153, 153)),
    (14, 255, "guard rail", (180, 165, 180)),
    (15, 255, "bridge", (150, 100, 100)),
    (16, 255, "tunnel", (150, 120, 90)),
    (17, 5, "pole", (153, 153, 153)),
    (18, 255, "polegroup", (153, 153, 153)),
    (19, 6, "traffic light", (250, 170, 30)),
    (20, 7, "traffic sign", (220, 220, 0)),
    (21, 8, "vegetation", (107, 142, 35)),
    (22, 9, "terrain", (152, 251, 152)),
    (23, 10, "sky", (70, 130, 180)),
    (24, 11, "person", (220, 20, 60)),
    (25, 12, "rider", (255, 0, 0)),
    (26, 13, "car", (0, 0, 142)),
    (27, 14, "truck", (0, 0, 70)),
    (28, 15, "bus", (0, 60, 100)),
    (29, 255, "caravan", (0, 0, 90)),
    (30, 255, "trailer", (0, 0, 110)),
    (31, 16, "train", (0, 80, 100)),
    (32, 17, "motorcycle", (0, 0, 230)),
    (33, 18, "bicycle", (119, 11, 32)),
)
CITYSCAPES_NUM_LABEL_IDS = len(_CITYSCAPES_LABELS)


def _cityscapes_lookup() -> np.ndarray:
  table = np.full((256,), IGNORE_LABEL, np.uint8)
  for label_id, train_id, _, _ in _CITYSCAPES_LABELS:
    table[label_id] = train_id
  return table


# CITYSCAPES_ID_TO_TRAIN_ID[label_id] -> train id; ids >= 34 are not Cityscapes ids.
CITYSCAPES_ID_TO_TRAIN_ID = _cityscapes_lookup()

_CITYSCAPES_TRAIN = sorted((t, n, c) for _, t, n, c in _CITYSCAPES_LABELS if t != IGNORE_LABEL)
CITYSCAPES = DatasetInfo(
    name="cityscapes",
    class_names=tuple(n for _, n, _ in _CITYSCAPES_TRAIN),
    palette=np.array([c for _, _, c in _CITYSCAPES_TRAIN], np.uint8),
)

# ADE20K / SceneParsing150 (MIT scene parsing benchmark; names and palette as in mmsegmentation).
# Annotation PNGs store 0 = "other" (ignored) and k = class k - 1.
_ADE20K_CLASSES = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
)
_ADE20K_PALETTE = (
    (120, 120, 120),
    (180, 120, 120),
    (6, 230, 230),
    (80, 50, 50),
    (4, 200, 3),
    (120, 120, 80),
    (140, 140, 140),
    (204, 5, 255),
    (230, 230, 230),
    (4, 250, 7),
    (224, 5, 255),
    (235, 255, 7),
    (150, 5, 61),
    (120, 120, 70),
    (8, 255, 51),
    (255, 6, 82),
    (143, 255, 140),
    (204, 255, 4),
    (255, 51, 7),
    (204, 70, 3),
    (0, 102, 200),
    (61, 230, 250),
    (255, 6, 51),
    (11, 102, 255),
    (255, 7, 71),
    (255, 9, 224),
    (9, 7, 230),
    (220, 220, 220),
    (255, 9, 92),
    (112, 9, 255),
    (8, 255, 214),
    (7, 255, 224),
    (255, 184, 6),
    (10, 255, 71),
    (255, 41, 10),
    (7, 255, 255),
    (224, 255, 8),
    (102, 8, 255),
    (255, 61, 6),
    (255, 194, 7),
    (255, 122, 8),
    (0, 255, 20),
    (255, 8, 41),
    (255, 5, 153),
    (6, 51, 255),
    (235, 12, 255),
    (160, 150, 20),
    (0, 163, 255),
    (140, 140, 140),
    (250, 10, 15),
    (20, 255, 0),
    (31, 255, 0),
    (255, 31, 0),
    (255, 224, 0),
    (153, 255, 0),
    (0, 0, 255),
    (255, 71, 0),
    (0, 235, 255),
    (0, 173, 255),
    (31, 0, 255),
    (11, 200, 200),
    (255, 82, 0),
    (0, 255, 245),
    (0, 61, 255),
    (0, 255, 112),
    (0, 255, 133),
    (255, 0, 0),
    (255, 163, 0),
    (255, 102, 0),
    (194, 255, 0),
    (0, 143, 255),
    (51, 255, 0),
    (0, 82, 255),
    (0, 255, 41),
    (0, 255, 173),
    (10, 0, 255),
    (173, 255, 0),
    (0, 255, 153),
    (255, 92, 0),
    (255, 0, 255),
    (255, 0, 245),
    (255, 0, 102),
    (255, 173, 0),
    (255, 0, 20),
    (255, 184, 184),
    (0, 31, 255),
    (0, 255, 61),
    (0, 71, 255),
    (255, 0, 204),
    (0, 255, 194),
    (0, 255, 82),
    (0, 10, 255),
    (0, 112, 255),
    (51, 0, 255),
    (0, 194, 255),
    (0, 122, 255),
    (0, 255, 163),
    (255, 153, 0),
    (0, 255, 10),
    (255, 112, 0),
    (143, 255, 0),
    (82, 0, 255),
    (163, 255, 0),
    (255, 235, 0),
    (8, 184, 170),
    (133, 0, 255),
    (0, 255, 92),
    (184, 0, 255),
    (255, 0, 31),
    (0, 184, 255),
    (0, 214, 255),
    (255, 0, 112),
    (92, 255, 0),
    (0, 224, 255),
    (112, 224, 255),
    (70, 184, 160),
    (163, 0, 255),
    (153, 0, 255),
    (71, 255, 0),
    (255, 0, 163),
    (255, 204, 0),
    (255, 0, 143),
    (0, 255, 235),
    (133, 255, 0),
    (255, 0, 235),
    (245, 0, 255),
    (255, 0, 122),
    (255, 245, 0),
    (10, 190, 212),
    (214, 255, 0),
    (0, 204, 255),
    (20, 0, 255),
    (255, 255, 0),
    (0, 153, 255),
    (0, 41, 255),
    (0, 255, 204),
    (41, 0, 255),
    (41, 255, 0),
    (173, 0, 255),
    (0, 245, 255),
    (71, 0, 255),
    (122, 0, 255),
    (0, 255, 184),
    (0, 92, 255),
    (184, 255, 0),
    (0, 133, 255),
    (255, 214, 0),
    (25, 194, 194),
    (102, 255, 0),
    (92, 0, 255),
)
ADE20K = DatasetInfo(
    name="ade20k", class_names=_ADE20K_CLASSES, palette=np.array(_ADE20K_PALETTE, np.uint8)
)


def _ade20k_lookup() -> np.ndarray:
  table = np.full((256,), IGNORE_LABEL, np.uint8)
  table[1:151] = np.arange(150, dtype=np.uint8)
  return table


# ADE20K_ID_TO_TRAIN_ID[png value] -> train id: 0 -> 255, k -> k - 1 for k in 1..150.
ADE20K_ID_TO_TRAIN_ID = _ade20k_lookup()
ADE20K_NUM_LABEL_IDS = 151

# The synthetic long-range dataset (see synthetic.py for what each class means).
SYNTHETIC = DatasetInfo(
    name="synthetic",
    class_names=(
        "background",
        "cue stripe",
        "shape (red cue)",
        "shape (green cue)",
        "shape (blue cue)",
        "checker patch",
    ),
    palette=np.array(
        [
            (40, 40, 40),
            (255, 255, 255),
            (220, 40, 40),
            (40, 200, 60),
            (50, 90, 230),
            (240, 200, 40),
        ],
        np.uint8,
    ),
)


def _voc_palette(num_classes: int) -> np.ndarray:
  """The PASCAL VOC colour map: the index's bits, three at a time, fill R, G, B from bit 7 down."""
  palette = np.zeros((num_classes, 3), np.uint8)
  for index in range(num_classes):
    value, colour = index, [0, 0, 0]
    for shift in range(7, -1, -1):
      for channel in range(3):
        colour[channel] |= ((value >> channel) & 1) << shift
      value >>= 3
    palette[index] = colour
  return palette


# PASCAL VOC 2012 segmentation: background and 20 object classes; label PNGs store the class
# index, and 255 on the object boundaries (not evaluated).
_VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOC = DatasetInfo(name="voc", class_names=_VOC_CLASSES, palette=_voc_palette(21))

_INFOS = {info.name: info for info in (CITYSCAPES, ADE20K, VOC, SYNTHETIC)}
DATASET_NAMES = tuple(_INFOS)
# The label-id tables of the datasets whose annotation files do not store train ids.
_ID_TO_TRAIN_ID = {"cityscapes": CITYSCAPES_ID_TO_TRAIN_ID, "ade20k": ADE20K_ID_TO_TRAIN_ID}


def dataset_info(name: str) -> DatasetInfo:
  """Returns the classes and palette of 'cityscapes', 'ade20k', 'voc' or 'synthetic'."""
  if name not in _INFOS:
    raise ValueError(f"data.name={name!r} is unknown; use one of {sorted(_INFOS)}.")
  return _INFOS[name]


def dataset_for_model(num_classes: int, name: str | None = None) -> DatasetInfo:
  """The dataset whose palette and label ids a model's outputs use: ``name``, or the one
  known dataset with ``num_classes`` classes."""
  if name:
    info = dataset_info(name)
    if info.num_classes != num_classes:
      raise ValueError(
          f"--dataset={name} has {info.num_classes} classes but the model predicts"
          f" {num_classes}; pass the dataset the model was trained on."
      )
    return info
  matches = [info for info in _INFOS.values() if info.num_classes == num_classes]
  if len(matches) != 1:
    raise ValueError(
        f"The model predicts {num_classes} classes, which names no single known dataset;"
        f" pass --dataset (one of {', '.join(DATASET_NAMES)})."
    )
  return matches[0]


def train_id_to_label_id(name: str) -> np.ndarray:
  """(256,) uint8: a dataset's train id -> the id its annotation files use.

  The inverse of the official table (Cityscapes ``labelIds``, as a benchmark
  submission expects; ADE20K k -> k + 1); ignore (255) maps to 0, 'unlabeled'.
  Datasets stored as train ids map every id to itself.
  """
  info = dataset_info(name)
  if name not in _ID_TO_TRAIN_ID:
    return np.arange(256, dtype=np.uint8)
  table = np.zeros((256,), np.uint8)
  for label_id, train_id in reversed(list(enumerate(_ID_TO_TRAIN_ID[name]))):
    if train_id < info.num_classes:
      table[train_id] = label_id  # reversed: the smallest label id of a train id wins.
  return table
