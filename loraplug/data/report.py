"""What cleaning removed, per split and filter, with a few examples: a rich table and ``data_report.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from loraplug.data.options import CleanOptions
from loraplug.rundir import atomic_write_json

REPORT_FILE = "data_report.json"
PREVIEW_CHARS = 120


def preview(text: str, limit: int = PREVIEW_CHARS) -> str:
    """One line of at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Removed:
    """One removed sample, shown as an example."""

    id: str
    text: str
    reason: str


@dataclass
class FilterCount:
    """How many samples one filter removed from one split, and the first few of them."""

    name: str
    description: str
    removed: int = 0
    examples: list[Removed] = field(default_factory=list)

    def remove(self, sample_id: str, text: str, reason: str, keep_examples: int) -> None:
        self.removed += 1
        if len(self.examples) < keep_examples:
            self.examples.append(Removed(sample_id, preview(text), reason))


@dataclass
class SplitReport:
    """One split: samples before and after cleaning, and each filter's count.

    ``before``/``after`` are ``None`` for a streamed split, whose filters run while training reads it.
    """

    before: int | None = None
    after: int | None = None
    filters: list[FilterCount] = field(default_factory=list)

    def counter(self, name: str, description: str) -> FilterCount:
        for existing in self.filters:
            if existing.name == name:
                return existing
        created = FilterCount(name, description)
        self.filters.append(created)
        return created


@dataclass
class DataReport:
    """The cleaning report of a run: the options used, the splits, and the sampling weights."""

    options: CleanOptions
    splits: dict[str, SplitReport] = field(default_factory=dict)
    sampling: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> SplitReport:
        return self.splits.setdefault(name, SplitReport())

    def as_json(self) -> dict[str, Any]:
        return {
            "options": self.options.model_dump(mode="json"),
            "splits": {name: asdict(split) for name, split in self.splits.items()},
            "sampling": self.sampling,
            "notes": self.notes,
        }

    def write(self, run_dir: Path) -> Path:
        path = run_dir / REPORT_FILE
        atomic_write_json(path, self.as_json())
        return path

    def render(self, console: Console) -> None:
        """The report as a table: one row per filter, the removed count of each split, examples."""
        names = list(self.splits)
        table = Table(title="data cleaning", title_justify="left")
        table.add_column("filter")
        for name in names:
            table.add_column(f"removed ({name})", justify="right")
        table.add_column("examples", overflow="fold")
        order: list[tuple[str, str]] = []
        for split in self.splits.values():
            for count in split.filters:
                if (count.name, count.description) not in order:
                    order.append((count.name, count.description))
        for name, description in order:
            cells, examples = [], []
            for split_name in names:
                found = next((c for c in self.splits[split_name].filters if c.name == name), None)
                cells.append("—" if found is None else str(found.removed))
                if found is not None:
                    examples += [
                        f"{escape(e.id)}: {escape(e.text)} [dim]({escape(e.reason)})[/]"
                        for e in found.examples
                    ]
            table.add_row(f"{name}\n[dim]{escape(description)}[/]", *cells, "\n".join(examples))
        totals = []
        for name, split in self.splits.items():
            if split.before is None:
                totals.append(f"{name}: filtered while streaming")
            else:
                totals.append(f"{name}: {split.before} → {split.after} samples")
        table.caption = "; ".join(totals)
        table.caption_justify = "left"
        console.print(table)
        for key, value in self.sampling.items():
            console.print(f"sampling {escape(key)}: {escape(str(value))}", highlight=False)
        for note in self.notes:
            console.print(f"[dim]{escape(note)}[/]", highlight=False)
