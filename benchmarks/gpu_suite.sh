#!/usr/bin/env bash
# Every GPU measurement README quotes, in one run, each under its own time limit; results are
# written as they come. Run from the repository root on a machine with one NVIDIA GPU, jax with
# CUDA and torch with CUDA:
#
#   OUT=results bash benchmarks/gpu_suite.sh
#
# Writes OUT/versions.txt, OUT/train_step.{md,json,log} and OUT/cca_kernels.{md,json,log}.
set -u
out=${OUT:-gpu_results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import jax, jaxlib, flax, torch; print('jax', jax.__version__, 'jaxlib',
jaxlib.__version__, 'flax', flax.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$out/versions.txt" 2>&1
cat "$out/versions.txt"

# The train step: JAX variants compile concurrently, then every variant takes the GPU alone.
timeout "${TRAIN_STEP_SECONDS:-330}" python3 benchmarks/train_step.py --timeout 300 \
  --variants "${TRAIN_STEP_VARIANTS:-torch:float32,torch:bfloat16,torch:bfloat16:channels_last,jax:float32:einsum,jax:float32:einsum:save_convs,jax:float32:einsum:blocks,jax:float32:pallas,jax:float32:einsum:none:bn_fast_variance=true,jax:bfloat16:einsum,jax:bfloat16:pallas,jax:bfloat16:einsum:save_convs}" \
  --json "$out/train_step.json" > "$out/train_step.md" 2> "$out/train_step.log"
echo "train_step exit $?"; cat "$out/train_step.md"

# Criss-cross attention alone at the Cityscapes shape: every kernel configuration, fp32 and bf16.
timeout "${CCA_SECONDS:-200}" python3 benchmarks/cca_kernels.py --size 97 --batch 8 --sweep \
  --json "$out/cca_kernels.json" > "$out/cca_kernels.md" 2> "$out/cca_kernels.log"
echo "cca_kernels exit $?"; cat "$out/cca_kernels.md"
