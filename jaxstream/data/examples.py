"""A columnar block of parsed examples, as every reader returns it."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class ReadReport:
    """What a reader saw: lines parsed, lines skipped as malformed, the first few reasons,
    and tokens of slots it was not asked to read (skipped, counted)."""

    lines: int = 0
    malformed: int = 0
    first_errors: list[str] = dataclasses.field(default_factory=list)
    ignored_tokens: int = 0
    files: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (file, examples)

    def merge(self, other: ReadReport, keep: int = 5) -> None:
        self.lines += other.lines
        self.malformed += other.malformed
        self.ignored_tokens += other.ignored_tokens
        self.files.extend(other.files)
        self.first_errors.extend(other.first_errors[: max(0, keep - len(self.first_errors))])


@dataclasses.dataclass
class Examples:
    """N examples: labels, dense features and, per slot, a CSR list of raw int64 feature IDs.

    ``slot_offsets[s]`` has N + 1 entries; example i's IDs in slot s are
    ``slot_ids[s][slot_offsets[s][i]:slot_offsets[s][i + 1]]`` (empty = missing).
    """

    labels: np.ndarray  # [N] float32 in {0, 1}
    dense: np.ndarray  # [N, D] float32
    slot_ids: dict[str, np.ndarray]
    slot_offsets: dict[str, np.ndarray]
    line_numbers: np.ndarray | None = None  # [N] 1-based line of each example in its file

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, start: int, stop: int) -> Examples:
        """Rows [start, stop) as a new block (CSR arrays rebased to zero)."""
        ids, offs = {}, {}
        for s, o in self.slot_offsets.items():
            lo, hi = o[start], o[stop]
            ids[s] = self.slot_ids[s][lo:hi]
            offs[s] = o[start : stop + 1] - lo
        lines = None if self.line_numbers is None else self.line_numbers[start:stop]
        return Examples(self.labels[start:stop], self.dense[start:stop], ids, offs, lines)

    @staticmethod
    def concat(parts: list[Examples]) -> Examples:
        if len(parts) == 1:
            return parts[0]
        slots = parts[0].slot_ids.keys()
        ids, offs = {}, {}
        for s in slots:
            ids[s] = np.concatenate([p.slot_ids[s] for p in parts])
            shifts = np.cumsum([0] + [p.slot_offsets[s][-1] for p in parts[:-1]])
            offs[s] = np.concatenate(
                [parts[0].slot_offsets[s][:1]]
                + [p.slot_offsets[s][1:] + sh for p, sh in zip(parts, shifts, strict=True)]
            )
        lines = None
        if all(p.line_numbers is not None for p in parts):
            lines = np.concatenate([p.line_numbers for p in parts])
        return Examples(
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.dense for p in parts]),
            ids,
            offs,
            lines,
        )
