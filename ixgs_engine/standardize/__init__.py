"""Radiographic standardization: realistic X-ray simulation from CT, a Pix2Pix model that maps
raw radiographs to bone-enhanced DRR line integrals, its training and its use on scans."""

from ixgs_engine.standardize.inference import apply_model, standardize_scan
from ixgs_engine.standardize.model import CONFIGS, StandardizationModel, load_model, save_model

__all__ = ["CONFIGS", "StandardizationModel", "apply_model", "load_model", "save_model", "standardize_scan"]
