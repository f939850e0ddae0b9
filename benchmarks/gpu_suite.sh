#!/usr/bin/env bash
# Every GPU measurement README quotes, in one run, each under its own time limit; results are
# written as they come. Run from the repository root on a machine with one NVIDIA GPU, jax with
# CUDA and torch with CUDA:
#
#   OUT=results bash benchmarks/gpu_suite.sh
#
# The criss-cross kernel sweep holds the GPU (a lock file) while the train-step variants compile
# on the CPU cores; the train steps are timed after it, one at a time. Writes OUT/versions.txt,
# OUT/train_step.{md,json,log} and OUT/cca_kernels.{md,json,log}.
set -u
out=${OUT:-gpu_results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
lock=$(mktemp)

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import jax, jaxlib, flax, torch, triton; print('jax', jax.__version__, 'jaxlib',
jaxlib.__version__, 'flax', flax.__version__, 'torch', torch.__version__, 'cuda',
torch.version.cuda, 'triton', triton.__version__)"
} > "$out/versions.txt" 2>&1
cat "$out/versions.txt"

hold_gpu() {  # hold_gpu COMMAND...: run COMMAND holding the lock.
  python3 -c 'import fcntl, subprocess, sys
with open(sys.argv[1], "a") as f:
  fcntl.flock(f, fcntl.LOCK_EX)
  sys.exit(subprocess.call(sys.argv[2:]))' "$lock" "$@"
}

# Criss-cross attention alone at the Cityscapes shape: every kernel configuration, fp32 and bf16.
hold_gpu timeout "${CCA_SECONDS:-200}" python3 benchmarks/cca_kernels.py --size 97 --batch 8 \
  --sweep --json "$out/cca_kernels.json" > "$out/cca_kernels.md" 2> "$out/cca_kernels.log" &
sweep=$!
sleep 5

# The train step: JAX variants compile meanwhile, then every variant takes the GPU alone.
timeout "${TRAIN_STEP_SECONDS:-420}" python3 benchmarks/train_step.py --timeout 400 \
  --lock "$lock" --json "$out/train_step.json" \
  --variants "${TRAIN_STEP_VARIANTS:-torch:float32,torch:bfloat16,torch:bfloat16:channels_last,jax:float32:einsum,jax:float32:einsum:save_convs,jax:float32:einsum:blocks,jax:float32:pallas,jax:float32:einsum:none:bn_fast_variance=true,jax:bfloat16:einsum,jax:bfloat16:pallas,jax:bfloat16:einsum:save_convs}" \
  > "$out/train_step.md" 2> "$out/train_step.log"
echo "train_step exit $?"
wait "$sweep"
echo "cca_kernels exit $?"
cat "$out/cca_kernels.md" "$out/train_step.md"
