"""Numpy/dask metrics of a dump: kernels, blocks (compute), geometry, calibration, robustness, the analysis table (the one column registry) and per-run summaries."""
