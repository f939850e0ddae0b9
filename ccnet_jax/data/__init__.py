"""Datasets, label tables, augmentation and input pipelines for semantic segmentation."""
