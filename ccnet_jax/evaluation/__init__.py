"""Evaluation: confusion-matrix metrics, whole / sliding / multi-scale inference, PNGs."""

from ccnet_jax.evaluation.config import MULTI_SCALES, base_eval_config, multi_scale_eval_config
from ccnet_jax.evaluation.evaluator import Evaluator, evaluate, model_predict_fn
from ccnet_jax.evaluation.inference import predict_logits, sliding_window_offsets
from ccnet_jax.evaluation.metrics import (
    confusion_matrix, format_results_table, metrics_from_confusion,
)
from ccnet_jax.evaluation.visualize import colorize, denormalize, overlay, save_predictions
