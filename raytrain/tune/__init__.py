"""Hyper-parameter search with Ray Tune; every trial is a sharded multi-worker training run."""
