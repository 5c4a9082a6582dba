"""One error type for bad input: every message names the file, the line and the field."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """Bad input data, located as precisely as we can: ``file:line: field: message``."""

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        super().__init__(self.describe())

    def describe(self) -> str:
        where = self.path or "<input>"
        if self.line is not None:
            where += f":{self.line}"
        if self.field:
            where += f": field '{self.field}'"
        return f"{where}: {self.message}"


@dataclass
class SkipReport:
    """What a ``--skip-invalid`` read left out; ``errors`` keeps the first few for the user."""

    skipped: int = 0
    errors: list[DataError] = field(default_factory=list)
    keep: int = 20

    def add(self, error: DataError) -> None:
        self.skipped += 1
        if len(self.errors) < self.keep:
            self.errors.append(error)

    def summary(self) -> str:
        if not self.skipped:
            return "no invalid lines"
        lines = [f"skipped {self.skipped} invalid line(s):"]
        lines += [f"  {e.describe()}" for e in self.errors]
        if self.skipped > len(self.errors):
            lines.append(f"  ... and {self.skipped - len(self.errors)} more")
        return "\n".join(lines)
