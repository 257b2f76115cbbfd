"""Sharded training on Ray Train."""
