"""python -m ccnet_jax.aot: the train step compiled for a 4-chip TPU v5e and for 2 H100s.

Each compile runs the command on a tiny config in its own process (the compilers of
absent devices load there only), and every check of that compile reads its one report:
it compiles, the step gathers nothing across devices (the batch stays split, Pallas
kernels included), cuDNN gets no convolution with a map-sized window, and the memory
plan is reported. The census itself is checked on HLO written by hand.
"""

import json
import os

import pytest

from ccnet_jax.aot import libraries
from ccnet_jax.aot.analysis import Census, ProgramReport, hlo_census, shape_bytes
from ccnet_jax.aot.compile import TargetReport, lowering
from ccnet_jax.aot.table import format_table
from ccnet_jax.aot.targets import parse_target
from ccnet_jax.errors import UserError
from tests.processes import run_python

# The demo's network at its smallest: ResNet-18 of width 8, 16-channel heads, R=2, 64x64
# crops of batch 4, a 2-channel query in the attention.
TINY = (
    "--config=configs/synthetic.py",
    "--config.model.backbone.base_width=8",
    "--config.model.head.out_channels=16",
    "--config.model.aux.channels=16",
    "--config.data.crop_size=64,64",
    "--config.train.global_batch_size=4",
    "--config.eval.batch_size=4",
    "--eval_size=64,64",
)


def _compile(tmp_path, target: str, cca_impl: str, *, eval_step: bool) -> dict:
  report = tmp_path / "report.json"
  process = run_python(
      "-m",
      "ccnet_jax.aot",
      *TINY,
      f"--target={target}",
      f"--config.model.cca_impl={cca_impl}",
      f"--eval={eval_step}",
      f"--json={report}",
      one_device=True,
      timeout=1200,
  )
  assert process.returncode == 0, process.stderr[-3000:]
  assert "| memory plan per device |" in process.stdout
  assert process.stderr.strip() == "", process.stderr[-3000:]  # No native start-up logs.
  return json.loads(report.read_text())


@pytest.mark.parametrize(
    "target, cca_impl, eval_step",
    [
        ("tpu:v5e:2x2", "einsum", False),
        ("tpu:v5e:2x2", "pallas", True),
        ("gpu:h100x2", "einsum", False),
        ("gpu:h100x2", "pallas", True),
    ],
)
def test_compiles_without_gathering_the_batch(tmp_path, target, cca_impl, eval_step):
  report = _compile(tmp_path, target, cca_impl, eval_step=eval_step)
  assert report["num_devices"] == 4 if target.startswith("tpu") else 2
  assert report["fits"]
  for program in report["programs"]:
    census = program["census"]
    assert "all-gather" not in census["collectives"], (program["name"], census)
    assert census["map_sized_windows"] == [], (program["name"], census)
    assert 0 < program["planned_bytes"] < 2**30
    assert census["flops"] > 0
  step = report["programs"][0]
  assert step["name"] == "train step" and step["per_device_batch"] == 4 // report["num_devices"]
  # The gradients (and BatchNorm statistics) are summed over the devices.
  assert census_count(step, "all-reduce") > 0
  if target.startswith("gpu"):
    assert step["census"]["convolutions"].get("convBackwardFilter", 0) > 0
  assert len(report["programs"]) == (2 if eval_step else 1)


def test_dilated_conv_forms_on_gpu(tmp_path):
  """benchmarks/aot_dilated_conv.py: on GPU XLA's form leaves one weight gradient with a
  map-sized window per dilated convolution; the space-to-batch forms leave none, for more
  products (the phases are padded to multiples of the dilation: a few per cent at 97x97)."""
  rows_file = tmp_path / "rows.json"
  flags = ("--target=gpu:h100", "--size=9", "--batch=2", "--dtype=float32", f"--json={rows_file}")
  process = run_python("benchmarks/aot_dilated_conv.py", *flags, one_device=True, timeout=1200)
  assert process.returncode == 0, process.stderr[-3000:]
  rows = json.loads(rows_file.read_text())["rows"]
  assert [row["form"] for row in rows] == ["lax", "space_to_batch_wgrad", "space_to_batch"] * 2
  for layer in (rows[:3], rows[3:]):
    assert [row["map_sized"] for row in layer] == [1, 0, 0]
    assert all(row["convolutions"] == 3 for row in layer)
    assert layer[0]["gflops"] < layer[1]["gflops"] <= layer[2]["gflops"]


def census_count(program: dict, kind: str) -> int:
  return program["census"]["collectives"].get(kind, [0, 0])[0]


def test_missing_compiler_is_one_line_naming_the_install(tmp_path):
  process = run_python(
      "-m",
      "ccnet_jax.aot",
      *TINY,
      "--target=tpu:v5e:2x2",
      env={**os.environ, libraries.SITE_ENV: str(tmp_path / "absent")},
      one_device=True,
  )
  assert process.returncode == 1
  lines = process.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: compiling for TPU needs libtpu"), lines
  assert libraries.INSTALL in lines[0]


def test_what_a_target_cannot_lower_is_one_line_naming_program_and_target():
  """As Mosaic reports a kernel outside shard_map on a multi-chip slice."""
  target = parse_target("tpu:v5e:2x2")
  expected = "^the train step cannot be lowered for tpu:v5e:2x2: Mosaic kernels cannot be split.$"
  with pytest.raises(UserError, match=expected):
    with lowering("train step", target):
      raise NotImplementedError("\nMosaic kernels cannot be split.\nWrap the call in a shard_map.")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("tpu:v5e:4x4", ("tpu", "v5e", "4x4", 16 * 2**30)),
        ("tpu:v5p:2x2x1", ("tpu", "v5p", "2x2x1", 95 * 2**30)),
        ("gpu:h100", ("gpu", "h100", "1x1x1", 84942979072)),
        ("gpu:h200x8", ("gpu", "h200", "1x1x8", 151397597184)),
        ("gpu:a100x16", ("gpu", "a100", "1x2x8", 85100068864)),
    ],
)
def test_targets(text, expected):
  target = parse_target(text)
  assert (target.platform, target.kind, target.topology, target.device_memory) == expected
  assert target.name == text


@pytest.mark.parametrize("text", ["tpu:v9:2x2", "gpu:h300", "gpu:h100x12", "cpu", "tpu:v5e"])
def test_bad_targets_name_the_forms(text):
  with pytest.raises(UserError, match=f"--target={text}"):
    parse_target(text)


HLO = """
HloModule step
%fused (param_0: f32[4,8]) -> f32[4,4] {
  %param_0 = f32[4,8]{1,0} parameter(0)
  ROOT %dot.1 = f32[4,4]{1,0} dot(%param_0, %param_0), lhs_contracting_dims={1}, rhs_contracting_dims={1}
}
ENTRY %main (x: bf16[2,9,9,16], w: bf16[32,3,3,16], g: bf16[2,9,9,32]) -> f32[4,4] {
  %x = bf16[2,9,9,16]{3,2,1,0} parameter(0)
  %w = bf16[32,3,3,16]{3,2,1,0} parameter(1)
  %g = bf16[2,9,9,32]{3,2,1,0} parameter(2)
  %q = f32[9,9,16]{2,1,0} parameter(3)
  %k = f32[9,5,16]{2,1,0} parameter(4)
  %conv = (bf16[2,9,9,32]{3,2,1,0}, u8[0]{0}) custom-call(%x, %w), window={size=3x3 pad=2_2x2_2 rhs_dilate=2x2}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"
  %wgrad = (bf16[32,3,3,16]{3,2,1,0}, u8[0]{0}) custom-call(%x, %g), window={size=3x3}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter"
  %bad = (bf16[16,3,3,32]{3,2,1,0}, u8[0]{0}) custom-call(%x, %g), window={size=9x9 stride=2x2}, dim_labels=f01b_i01o->01bf, custom_call_target="__cudnn$convForward"
  %ar = (f32[32]{0}, f32[3,3]{1,0}) all-reduce(%a, %b), to_apply=%add
  %ags = (f32[2,8]{1,0}, f32[4,8]{1,0}) all-gather-start(%c), dimensions={0}
  %agd = f32[4,8]{1,0} all-gather-done(%ags)
  %t = bf16[2,16,9,9]{3,2,1,0} transpose(%x), dimensions={0,3,1,2}
  %bmm = f32[9,9,5]{2,1,0} convolution(%q, %k), window={size=9 stride=8 lhs_dilate=9}, dim_labels=0bf_0oi->0bf
  ROOT %f = f32[4,4]{1,0} fusion(%agd), kind=kLoop, calls=%fused
}
"""


def test_census_of_hand_written_hlo():
  census = hlo_census(HLO)
  assert census.collectives == {"all-gather": [1, 4 * 8 * 4], "all-reduce": [1, (32 + 9) * 4]}
  assert census.convolutions == {"convBackwardFilter": 1, "convForward": 2, "convolution": 1}
  assert census.map_sized_windows == ["size=9x9 stride=2x2"]
  assert census.transposes == 1
  forward = 2 * (2 * 9 * 9 * 32) * 9 * 16  # outputs x taps x input channels, x2
  fused_dot = 2 * 4 * 4 * 8
  # The forward conv and the weight gradient (the same products); the map-sized "conv"
  # counts its 9x9 taps over 2 images: 2 x (16 * 3 * 3 * 32) x 81 x 2.
  # A TPU's batched product (9 products of 9x16 by 16x5): the batch is a spatial dimension
  # dilated by 9 under a window of 9, one tap per output, not 9.
  batched_product = 2 * 9 * (9 * 5) * 16
  assert census.flops == (
      2 * forward + 2 * (16 * 3 * 3 * 32) * 81 * 2 + fused_dot + batched_product
  )
  assert shape_bytes("(bf16[2,3]{1,0}, s32[4]{0}, pred[])") == 12 + 16 + 1


def _program(planned: int, error: str = "") -> ProgramReport:
  return ProgramReport("train step", 8, 1, 1.0, {}, planned, Census(), error=error)


def test_fit_and_margin():
  target = parse_target("tpu:v5e:2x2")
  fits = TargetReport(target, "TPU v5 lite", 4, [_program(8 * 2**30)])
  over = TargetReport(target, "TPU v5 lite", 4, [_program(18 * 2**30)])
  refused = TargetReport(target, "TPU v5 lite", 4, [_program(0, "RESOURCE_EXHAUSTED: ...")])
  assert fits.fits() and not over.fits() and not refused.fits()
  assert "| fits | yes, 8.00 GiB spare (50%) |" in format_table(fits)
  assert "| fits | **no**, 2.00 GiB over |" in format_table(over)
  assert "**no**: RESOURCE_EXHAUSTED" in format_table(refused)
