"""Prediction on the user's files: images, folders, globs and videos in, label maps out."""

from ccnet_jax.prediction.files import predict_paths
from ccnet_jax.prediction.predictor import Predictor

__all__ = ["Predictor", "predict_paths"]
