#!/usr/bin/env bash
# Installs the project and everything its tests need into the current Python (README's Install;
# CI runs it too).
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -q --upgrade -r requirements.txt -r requirements-dev.txt -r requirements-explore.txt
# jax2onnx's metadata pins orbax-checkpoint<0.11.37: the file lists what it imports instead.
python -m pip install -q --no-deps -r requirements-onnx.txt
python -m pip install -q --no-deps -e .
# The compilers of absent TPUs and GPUs (python -m ccnet_jax.aot), apart from site-packages.
python -m pip install -q --no-deps --upgrade --target .aot -r requirements-aot.txt
