"""What a reader asks the projections for: ``RunQuery``, the one description of a run listing.

Every reader of run listings takes this model: ``GET /runs`` reads it from the query string (FastAPI validates it
there), the store answers it (``ProjectionStore.list_runs``), the SDK sends it (``Client.list_runs``), the CLI
builds it from its options (``tickflow runs``) and the dashboard's runs table from its form. A filter added here is
added everywhere at once, with one set of limits. Like ``projections.models``, it loads no server library, so the
SDK can use it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tickflow.projections.rows import RunStatusName

__all__ = ["MAX_LIMIT", "RunQuery"]

#: The most runs one page holds.
MAX_LIMIT = 1_000


class RunQuery(BaseModel):
    """Which runs to list, the latest started first, and which page of them."""

    model_config = ConfigDict(frozen=True)

    status: RunStatusName | None = Field(
        default=None,
        description="Only runs in this status: waiting means suspended in a wait node until someone resumes it.",
    )
    workflow: str | None = Field(default=None, max_length=128, description="Only runs of this workflow.")
    limit: int = Field(default=50, ge=1, le=MAX_LIMIT, description="How many runs at most.")
    offset: int = Field(default=0, ge=0, le=10_000_000, description="How many of the matching runs to skip.")
    started_since_ms: int | None = Field(
        default=None, ge=0, le=10**14, description="Only runs started since (epoch ms)."
    )

    @field_validator("status", "workflow", mode="before")
    @classmethod
    def _blank_is_any(cls, value: Any) -> Any:
        """An empty filter is no filter: what a form's "any" option sends (``?status=``)."""
        return None if value == "" else value

    @classmethod
    def of(cls, query: RunQuery | None = None, /, **filters: Any) -> RunQuery:
        """``query`` (default: every run) with ``filters`` (any of its fields by name) applied on top, validated;
        a name that is no field is a ``TypeError``, as a wrong keyword argument is."""
        unknown = sorted(filters.keys() - cls.model_fields.keys())
        if unknown:
            raise TypeError(f"RunQuery has no field {', '.join(map(repr, unknown))}; its fields: "
                            f"{', '.join(cls.model_fields)}")
        base = query.model_dump(exclude_unset=True) if query is not None else {}
        return cls.model_validate({**base, **filters})

    def params(self) -> dict[str, Any]:
        """The query as ``GET /runs`` takes it: the fields that are set, by name."""
        return self.model_dump(exclude_none=True)
