"""What a job kind declares to run. The registry (``raytrain.kinds``) lists the kinds; the CLI, the pipeline and
submitted jobs look a kind's runner up there."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from ..spec.job import JobSpec


@dataclass
class StepContext:
    """A pipeline step's view of the pipeline: its spec, run directory, and what the step before it made."""

    spec: JobSpec
    run_dir: Path
    address: Optional[str]
    source: dict[str, str]  # what the next step reads: {"run": ...} | {"tune_run": ...} | {"ensemble": ...}
    done: dict[str, dict]  # each finished step's record (pipeline.json)
    serve_block: bool = True

    def step_spec(self, kind: str, **sections: Any) -> JobSpec:
        """An ordinary spec of ``kind`` from the pipeline's sections, its runs under ``<run>/<kind>/``."""
        from ..spec.loader import derived, parse_spec

        doc = derived(self.spec.model_dump(mode="json"), kind, name=kind, storage=str(self.run_dir), **sections)
        return parse_spec(doc, f"pipeline step {kind}")


@dataclass(frozen=True)
class Kind:
    """How a kind runs. What its spec may and must hold is its rule (``spec.job.RULES``), which validation reads
    without importing any runner."""

    name: str
    run: Callable[[JobSpec, Optional[str]], Optional[dict]]
    """runs a validated spec (on Ray at the address, or a local one); returns its summary with ``run_dir``"""
    outputs: tuple[str, ...]
    """what its run directory holds (docs/architecture.md lists them)"""
    step: Optional[Callable[[StepContext], tuple[dict, dict[str, str]]]] = None
    """runs it as a pipeline step: its record for pipeline.json and what the next step reads"""
