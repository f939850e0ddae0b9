"""Compiling the train and eval steps for TPU pods and GPUs on a machine that has neither.

``python -m ccnet_jax.aot --config configs/cityscapes.py --target=tpu:v5e:4x4`` compiles a
config's real steps for the target (XLA's deviceless ahead-of-time compilation: libtpu's
compile-only topologies, the CUDA plugin with a GPU target description) and prints the
compiled program's memory plan, FLOPs, collectives and, for GPUs, its cuDNN convolutions.
"""
