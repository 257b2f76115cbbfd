"""raytrain: train, tune, compress and serve recommender models on Ray."""

__version__ = "0.1.0"

from .errors import CheckpointError, DataError, RaytrainError, SpecError, SubmissionError

__all__ = ["CheckpointError", "DataError", "RaytrainError", "SpecError", "SubmissionError", "__version__"]
