"""The base of the SDK's own pydantic shapes (executions, pages, log entries, schedule states).

`defer_build`: pydantic builds a model's validator and serializer when the class is defined unless told
to wait; these shapes are only needed once something is listed, served or stored, so they are built on
first use and `import eventual_nb` stays short (`python -m benchmarks --only import_time`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Shape(BaseModel):
    model_config = ConfigDict(defer_build=True)
