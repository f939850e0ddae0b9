"""Image files read as the network sees them: upright (EXIF orientation) and 8 bits a channel.

References: the stored pixels turned by numpy as the EXIF orientation says (the TIFF/EXIF
specification's table), and 16-bit values scaled by their high byte in numpy; the explorer's
decoding of the same bytes must give the same array.
"""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ccnet_jax.data.images import read_image
from ccnet_jax.explore.session import Limits, RequestError, decode_image

ORIENTATION_TAG = 0x0112

# EXIF orientation -> the stored image turned upright, in numpy.
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1),
    8: lambda a: np.rot90(a, 1),
}


def stored(height=6, width=10, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def with_orientation(array, orientation, path, format_name):
  exif = Image.Exif()
  exif[ORIENTATION_TAG] = orientation
  options = {"quality": 100, "subsampling": 0} if format_name == "JPEG" else {}
  Image.fromarray(array).save(path, format=format_name, exif=exif.tobytes(), **options)


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_every_exif_orientation_is_applied(orientation, tmp_path):
  pixels = stored()
  path = tmp_path / "photo.png"  # Lossless: the stored pixels are known exactly.
  with_orientation(pixels, orientation, path, "PNG")
  np.testing.assert_array_equal(read_image(str(path)), UPRIGHT[orientation](pixels))


def test_a_phone_jpeg_is_read_upright_by_every_reader(tmp_path):
  """Orientation 6 (the phone held upright): a 6x10 stored image is 10x6 upright."""
  path = tmp_path / "phone.jpg"
  with_orientation(stored(), 6, path, "JPEG")
  with Image.open(path) as image:
    as_stored = np.asarray(image.convert("RGB"))  # The decoded JPEG, not turned.
  upright = read_image(str(path))
  assert upright.shape == (10, 6, 3)
  np.testing.assert_array_equal(upright, np.rot90(as_stored, -1))
  np.testing.assert_array_equal(decode_image(path.read_bytes(), Limits()), upright)


def _png16(path, values, color_type):
  """A 16-bit PNG written byte by byte (PIL writes no 16-bit colour or grey + alpha PNG)."""
  height, width = values.shape[:2]
  rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))
  chunk = lambda kind, data: (  # noqa: E731
      struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  )
  header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
  path.write_bytes(
      b"\x89PNG\r\n\x1a\n"
      + chunk(b"IHDR", header)
      + chunk(b"IDAT", zlib.compress(rows))
      + chunk(b"IEND", b"")
  )


def _pgm16(path, values, maxval=65535):
  path.write_bytes(
      f"P5 {values.shape[1]} {values.shape[0]} {maxval}\n".encode() + values.astype(">u2").tobytes()
  )


def _tiff16(path, values):
  Image.fromarray(values.astype(np.uint16)).save(path, format="TIFF")  # Mode I;16.


@pytest.mark.parametrize(
    "writer, channels",
    [
        (lambda p, v: _png16(p, v, 0), 1),  # Grey: PIL mode I;16.
        (lambda p, v: _png16(p, v, 4), 2),  # Grey + alpha.
        (lambda p, v: _png16(p, v, 2), 3),  # RGB.
        (lambda p, v: _png16(p, v, 6), 4),  # RGB + alpha.
        (_pgm16, 1),  # PIL mode I (32-bit integers holding 16-bit values).
        (_tiff16, 1),
    ],
    ids=["png-grey", "png-grey-alpha", "png-rgb", "png-rgba", "pgm", "tiff-grey"],
)
def test_16_bit_images_of_every_mode_are_scaled_by_their_high_byte(writer, channels, tmp_path):
  rng = np.random.default_rng(1)
  shape = (5, 7) if channels == 1 else (5, 7, channels)
  values = rng.integers(0, 65536, shape).astype(np.uint16)
  values.flat[:3] = (0, 255, 65535)  # The ends of the range, and a dark grey.
  path = tmp_path / "image"
  writer(path, values)
  high = (values >> 8).astype(np.uint8)
  grey = high if channels == 1 else high[..., 0]
  want = np.stack([grey] * 3, -1) if channels <= 2 else high[..., :3]
  got = read_image(str(path))
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(decode_image(path.read_bytes(), Limits()), want)


def test_a_12_bit_pgm_fills_the_8_bit_range(tmp_path):
  """PIL scales a PGM of maxval 4095 to 16 bits; white stays white, not 1/16 of it."""
  values = np.array([[0, 2048, 4095]], np.uint16)
  _pgm16(tmp_path / "twelve.pgm", values, maxval=4095)
  got = read_image(str(tmp_path / "twelve.pgm"))[..., 0]
  assert got[0, 0] == 0 and got[0, 2] == 255 and abs(int(got[0, 1]) - 128) <= 1


def test_pixels_without_an_8_bit_meaning_are_refused_in_one_line(tmp_path):
  Image.fromarray(np.full((3, 4), 0.5, np.float32)).save(tmp_path / "float.tif")
  with pytest.raises(ValueError, match=r"float\.tif holds floating-point pixels") as info:
    read_image(str(tmp_path / "float.tif"))
  assert "\n" not in str(info.value)
  Image.fromarray(np.full((3, 4), 1 << 20, np.int32)).save(tmp_path / "int32.tif")
  with pytest.raises(ValueError, match=r"int32\.tif holds 32-bit integer pixels"):
    read_image(str(tmp_path / "int32.tif"))
  with pytest.raises(RequestError, match="floating-point pixels"):
    decode_image((tmp_path / "float.tif").read_bytes(), Limits())


def test_a_damaged_file_is_named(tmp_path):
  (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
  with pytest.raises(ValueError, match=r"cannot decode image .*broken\.png"):
    read_image(str(tmp_path / "broken.png"))
  buffer = io.BytesIO()
  Image.fromarray(stored()).save(buffer, format="PNG")
  with pytest.raises(RequestError, match="damaged image"):
    decode_image(buffer.getvalue()[:60], Limits())
