"""One error hierarchy for raytrain.

Errors cross Ray process boundaries (a worker raises, the driver reports), so every class
pickles with its message intact. ``retryable`` says whether running the same thing again can help.
"""

from __future__ import annotations


class RaytrainError(Exception):
    """Root of every error raytrain raises on purpose."""

    retryable: bool = False
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self):  # keep pickling exact across Ray processes
        return (self.__class__, (self.message,))

    def __str__(self) -> str:
        return self.message


class SpecError(RaytrainError):
    """A job spec (or an override) is invalid. Holds every problem found, not just the first."""

    exit_code = 2

    def __init__(self, problems: list[str] | str, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        n = len(self.problems)
        text = f"{head}{n} problem{'s' if n != 1 else ''} in the job spec:\n" + "\n".join(
            f"  - {p}" for p in self.problems
        )
        super().__init__(text)

    def __reduce__(self):
        return (self.__class__, (self.problems, self.source))


class DataError(RaytrainError):
    """Input data is missing, corrupt or out of the declared schema."""


class PlanError(RaytrainError):
    """No sharding plan fits the tables into the given cluster under the spec's constraints."""


class CheckpointError(RaytrainError):
    """A checkpoint is incomplete, corrupt or does not fit the model."""


class SubmissionError(RaytrainError):
    """Talking to a Ray cluster failed (unreachable, refused, unknown job)."""

    retryable = True


class FetchError(DataError):
    """A built-in data set could not be fetched into the cache (network or registry)."""

    retryable = True
