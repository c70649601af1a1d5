"""The genotype: a versioned JSON document, the only form an architecture takes (GAS.md §7).

Produced once by derivation, consumed unchanged by retraining, benchmarking and the API.
Validated on load; errors name the offending field (``cells.3.nodes.1.0.op: ...``).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .specs import NetworkConfig

FORMAT = "gas-genotype"
VERSION = 1


class GenotypeError(ValueError):
    """A genotype document that does not validate; the message names the field."""


class Edge(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    input: int = Field(..., ge=0, description="Source node: 0 = cell k-2, 1 = cell k-1, 2+i = intermediate node i.")
    op: str = Field(..., min_length=1, description="Operation name from the vocabulary.")


class Cell(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    reduction: bool
    nodes: list[tuple[Edge, Edge]] = Field(..., min_length=1, description="Per intermediate node, its two inputs.")


class Provenance(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    search_job: str | None = None
    lut_id: str | None = None
    budget_ms: float | None = None
    settings_hash: str | None = None
    seed: int | None = None
    source: str = Field("search", description="search | random | manual | repaired")
    repaired_edges: int = 0


class Genotype(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    format: Literal["gas-genotype"] = FORMAT
    version: Literal[1] = VERSION
    ops: list[str] = Field(..., min_length=2, description="Op vocabulary of the search that produced it.")
    network: NetworkConfig
    cells: list[Cell]
    provenance: Provenance = Provenance()

    @model_validator(mode="after")
    def _consistent(self) -> "Genotype":
        from .ops import OPS

        unknown = [o for o in self.ops if o not in OPS]
        if unknown:
            raise ValueError(f"ops: unknown operations {unknown}")
        net = self.network
        if len(self.cells) != net.num_cells:
            raise ValueError(f"cells: {len(self.cells)} cells but network.num_cells is {net.num_cells}")
        for k, cell in enumerate(self.cells):
            if cell.reduction != (k in net.reduction_cells):
                raise ValueError(f"cells.{k}.reduction: {cell.reduction} disagrees with network.reduction_cells")
            if len(cell.nodes) != net.nodes:
                raise ValueError(f"cells.{k}.nodes: {len(cell.nodes)} nodes but network.nodes is {net.nodes}")
            for i, pair in enumerate(cell.nodes):
                for j, edge in enumerate(pair):
                    where = f"cells.{k}.nodes.{i}.{j}"
                    if edge.input >= 2 + i:
                        raise ValueError(f"{where}.input: {edge.input} is not an earlier node (must be < {2 + i})")
                    if edge.op not in self.ops:
                        raise ValueError(f"{where}.op: {edge.op!r} is not in ops {self.ops}")
                    if OPS[edge.op].zero:
                        raise ValueError(f"{where}.op: {edge.op!r} cannot be a kept operation")
                if pair[0].input == pair[1].input:
                    raise ValueError(f"cells.{k}.nodes.{i}: both edges come from node {pair[0].input}")
        return self

    # -- serialisation ----------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=True)

    def arch_hash(self) -> str:
        """Hash of what determines the architecture (not the provenance)."""
        return arch_hash_of(self.model_dump(mode="json"))

    def save(self, path: str | Path) -> None:
        from .checkpoint import atomic_write_bytes

        atomic_write_bytes(path, self.to_json().encode())


def _format_errors(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        parts.append(f"{loc}: {e['msg']}" if loc else e["msg"])
    return "; ".join(parts)


def parse_genotype(doc: Any) -> Genotype:
    """Validate a genotype from a dict, a JSON string or a Genotype; raise GenotypeError naming the field."""
    if isinstance(doc, Genotype):
        return doc
    if isinstance(doc, (str, bytes)):
        try:
            doc = json.loads(doc)
        except json.JSONDecodeError as exc:
            raise GenotypeError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise GenotypeError("a genotype must be a JSON object")
    if doc.get("format") not in (None, FORMAT):
        raise GenotypeError(f"format: expected {FORMAT!r}, got {doc.get('format')!r}")
    if "version" in doc and doc["version"] != VERSION:
        raise GenotypeError(f"version: this service reads version {VERSION}, got {doc['version']!r}")
    try:
        return Genotype.model_validate(doc)
    except ValidationError as exc:
        raise GenotypeError(_format_errors(exc)) from None


def load_genotype(path: str | Path) -> Genotype:
    return parse_genotype(Path(path).read_text())


def arch_hash_of(doc: dict) -> str:
    """:meth:`Genotype.arch_hash` of a genotype document as the core writes it (every field present),
    without validating it: torch-free, for the worker's parent process (validation imports core.ops)."""
    arch = {k: v for k, v in doc.items() if k != "provenance"}
    return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]

