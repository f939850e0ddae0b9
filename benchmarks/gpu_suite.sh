#!/usr/bin/env bash
# Every GPU measurement README quotes, in one run, each under its own time limit; results are
# written as they come. Run from the repository root on a machine with one NVIDIA GPU, jax with
# CUDA and torch with CUDA:
#
#   OUT=results bash benchmarks/gpu_suite.sh
#
# One program on the GPU at a time: XLA's convolution autotuning allocates tens of GB while it
# compiles, so concurrent compiles exhaust even an H200's memory. Writes OUT/versions.txt,
# OUT/train_step.{md,json,log} and OUT/cca_kernels*.{md,json,log}.
set -u
out=${OUT:-gpu_results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import jax, jaxlib, flax, torch, triton; print('jax', jax.__version__, 'jaxlib',
jaxlib.__version__, 'flax', flax.__version__, 'torch', torch.__version__, 'cuda',
torch.version.cuda, 'triton', triton.__version__)"
} > "$out/versions.txt" 2>&1
cat "$out/versions.txt"

# Criss-cross attention alone at the Cityscapes shape (B=8, 97x97, C'=64, C=512), fp32 and bf16,
# for each Pallas configuration in CCA_CONFIGS (';'-separated; empty: the whole TUNING_GRID).
IFS=';' read -ra configs <<< "${CCA_CONFIGS-query_block=64,channel_slice=128,num_warps=8;query_block=128,channel_slice=64,num_warps=8}"
[ ${#configs[@]} -eq 0 ] && configs=("")
for i in "${!configs[@]}"; do
  timeout "${CCA_SECONDS:-120}" python3 benchmarks/cca_kernels.py --size 97 --batch 8 --sweep \
    --block-sizes "${configs[$i]}" --json "$out/cca_kernels$i.json" \
    > "$out/cca_kernels$i.md" 2> "$out/cca_kernels$i.log"
  echo "cca_kernels ${configs[$i]} exit $?"; cat "$out/cca_kernels$i.md"
done

# The train step: Cityscapes recipe, 769x769, batch 4; one variant after another.
timeout "${TRAIN_STEP_SECONDS:-900}" python3 benchmarks/train_step.py --jobs 1 \
  --timeout "${VARIANT_SECONDS:-200}" --json "$out/train_step.json" \
  --variants "${TRAIN_STEP_VARIANTS:-torch:float32,torch:bfloat16,jax:float32:einsum,jax:bfloat16:pallas,jax:bfloat16:einsum,jax:float32:einsum:save_convs,jax:float32:einsum:blocks,torch:bfloat16:channels_last,jax:float32:pallas,jax:float32:einsum:none:bn_fast_variance=true}" \
  > "$out/train_step.md" 2> "$out/train_step.log"
echo "train_step exit $?"; cat "$out/train_step.md"
