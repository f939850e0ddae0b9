"""Evaluation: confusion-matrix metrics, whole / sliding / multi-scale inference, PNGs."""
