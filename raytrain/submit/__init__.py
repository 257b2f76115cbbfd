"""Submitting job specs to a Ray cluster (Jobs API) and rendering cluster manifests."""
