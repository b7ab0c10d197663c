"""Evaluation: 2-D/3-D image-quality metrics and reports."""
