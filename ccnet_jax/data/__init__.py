"""Datasets, augmentation and input pipelines for semantic segmentation."""
