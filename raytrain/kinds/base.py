"""What a job kind declares. The registry (``raytrain.kinds``) lists the kinds; the CLI, the pipeline, submitted
jobs and the spec loader look a kind up there and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

if TYPE_CHECKING:
    from . import JobSpec


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
    name: str
    run: Callable[[JobSpec, Optional[str]], Optional[dict]]
    """runs a validated spec (on Ray at the address, or a local one); returns its summary with ``run_dir``"""
    outputs: tuple[str, ...]
    """what its run directory holds (docs/architecture.md lists them)"""
    section: Optional[str] = None
    """its own JobSpec field, named like the kind (None: it has none)"""
    needs: str = ""
    """what its section holds, for the error when it is missing"""
    checks: Optional[Callable[[JobSpec, list[str]], list[str]]] = None
    """checks across its section and the rest of the spec; given the spec's steps (its kind, or a pipeline's)"""
    uses_models: bool = True
    """reads data and models through the data / model / train sections (their cross-field checks apply)"""
    uri_storage: bool = False
    """may write its runs to a URI (else a local or mounted path)"""
    step: Optional[Callable[[StepContext], tuple[dict, dict[str, str]]]] = None
    """runs it as a pipeline step: its record for pipeline.json and what the next step reads"""
