"""What a served variant is made of: its models on storage (``MemberRef``) and how they combine.

Kept free of heavy imports: Ray Serve unpickles a ``MemberRef`` in every replica, and a table shard that imported
TorchRec to read one would carry it for nothing (``serve/shards.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MemberRef:
    """One model to load: a run directory, the checkpoint in it, and how its tables are stored when served."""

    name: str
    run_dir: str
    checkpoint: str
    quantize: str = "none"  # every table's dtype (kinds.serve.TableDtype) ...
    quantize_tables: tuple[tuple[str, str], ...] = ()  # ... but these features'
    retrieval: str = ""  # a two-tower or content member's index settings (RetrievalSpec as JSON); "" for other models
    shards: int = 0  # embedding-shard deployments serving its tables (serve/shards.py); 0: loaded whole

    def __post_init__(self) -> None:  # JSON and asdict() round trips give lists
        object.__setattr__(self, "quantize_tables", tuple(tuple(x) for x in self.quantize_tables))

    @property
    def version(self) -> str:
        """What a reply names as the model that scored it: the run (its directory name) and the checkpoint."""
        return f"{Path(self.run_dir).name}/{Path(self.checkpoint.split('?')[0]).name}"

    @property
    def key(self) -> str:
        """One member deployment per distinct key: the same checkpoint stored two ways is two deployments."""
        tables = ",".join(f"{f}={d}" for f, d in sorted(self.quantize_tables))
        return f"{self.checkpoint}|{self.quantize}|{tables}|{self.retrieval}|{self.shards}"


@dataclass
class ResolvedVariant:
    name: str
    members: list[MemberRef]
    combiner: dict | None  # Combiner.to_dict(); None: a single model's own probability
    source: str
