"""Experiments for researchers: baselines (RTK SART/FDK), view-count and pose-robustness
sweeps, the standardization ablation, batches of scans, run locally or on a Ray/Dask cluster."""
