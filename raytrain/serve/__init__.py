"""Serving on Ray Serve: variants (a model, an ensemble, a distilled student) behind one validated HTTP API."""
