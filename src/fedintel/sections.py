"""The base of every config section: unknown keys are refused, assignments are validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A section (or sub-section) of the experiment file; every config module derives from it."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
