"""Experiments for researchers: baselines (RTK SART/FDK), view-count and pose-robustness
sweeps, batches of scans, run locally or on a Ray/Dask cluster."""
