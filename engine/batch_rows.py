"""The UNet rows of a sampling batch: every job's guidance branches, stacked, and re-selectable.

``engine.sampling`` expands each job into 1-3 rows (its guidance branches) and runs all rows of
all jobs through one UNet call. :class:`BatchRows` keeps which rows belong to which job, so the
loop can mix each job's branches back together, drop a job's rows mid-run (issue 5: a
cancelled job must stop costing UNet work inside a batch) and append the rows of jobs that join
a running batch (issue 25: step-level batching).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# One row: (prompt_embeds [1, Q, C], pooled [1, P], condition latent [1, 4, h, w] or None).
Row = tuple[torch.Tensor, torch.Tensor, "torch.Tensor | None"]


@dataclass(frozen=True)
class BatchRows:
    """Every guidance row of a batch in UNet order; ``spans[j]`` are job j's rows."""

    embeds: torch.Tensor
    pooled: torch.Tensor
    cond: torch.Tensor | None
    gather: torch.Tensor  # row -> job position, to expand the per-job latents
    spans: list[tuple[int, int]]

    @classmethod
    def stack(
        cls, per_job: Sequence[Sequence[Row]], device: torch.device, dtype: torch.dtype
    ) -> BatchRows:
        """Stacks each job's rows, in job order, on ``device`` in ``dtype``."""
        spans: list[tuple[int, int]] = []
        gather: list[int] = []
        embeds, pooled, conds = [], [], []
        for index, rows in enumerate(per_job):
            spans.append((len(gather), len(gather) + len(rows)))
            gather.extend([index] * len(rows))
            for prompt_embeds, pooled_row, cond in rows:
                embeds.append(prompt_embeds)
                pooled.append(pooled_row)
                if cond is not None:
                    conds.append(cond)
        return cls(
            embeds=torch.cat(embeds).to(device, dtype),
            pooled=torch.cat(pooled).to(device, dtype),
            cond=torch.cat(conds).to(device, dtype) if conds else None,
            gather=torch.tensor(gather, device=device),
            spans=spans,
        )

    def select(self, keep: Sequence[int]) -> BatchRows:
        """The rows of the jobs at positions ``keep`` (in that order), re-indexed from 0."""
        row_index: list[int] = []
        gather: list[int] = []
        spans: list[tuple[int, int]] = []
        for new_position, old_position in enumerate(keep):
            a, b = self.spans[old_position]
            spans.append((len(row_index), len(row_index) + b - a))
            row_index.extend(range(a, b))
            gather.extend([new_position] * (b - a))
        index = torch.tensor(row_index, device=self.embeds.device)
        return BatchRows(
            embeds=self.embeds[index],
            pooled=self.pooled[index],
            cond=self.cond[index] if self.cond is not None else None,
            gather=torch.tensor(gather, device=self.gather.device),
            spans=spans,
        )

    def concat(self, other: BatchRows) -> BatchRows:
        """These rows, then ``other``'s (its jobs numbered after these): jobs joining a batch."""
        offset, jobs = len(self), len(self.spans)
        return BatchRows(
            embeds=torch.cat([self.embeds, other.embeds]),
            pooled=torch.cat([self.pooled, other.pooled]),
            cond=None
            if self.cond is None or other.cond is None
            else torch.cat([self.cond, other.cond]),
            gather=torch.cat([self.gather, other.gather + jobs]),
            spans=self.spans + [(a + offset, b + offset) for a, b in other.spans],
        )

    def __len__(self) -> int:
        return len(self.gather)
