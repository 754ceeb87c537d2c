"""Memory-aware batching of no-grad forwards (old-policy and reference log-probs).

Those passes hold no activations for backward, so their batch can be far larger than the training micro-batch,
up to the point where the logits no longer fit. Guessing that point per model and GPU is a chore: start from
``training.logprob_micro_batch_size`` and halve it whenever CUDA runs out of memory, keeping the smaller size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


# Not accelerate's ``find_executable_batch_size`` (accelerate 1.15, read and measured): on an OOM it reruns the whole
# function from the first row, throwing away the chunks already computed, where this resumes at the failed chunk;
# it runs ``gc.collect()`` + cache emptying on every call, OOM or not (~120 ms per call measured on CPU with
# transformers loaded; here that is every no-grad pass); it recognises an OOM by message text (" out of memory.")
# rather than by type; it shrinks by 0.9x by default; and it remembers the reduced size only as long as one
# decorated function lives, while the trainer builds a new ``chunk`` closure for every pass.
class HalvingChunks:
    """Run ``fn`` over row chunks of at most ``size`` rows; on ``torch.OutOfMemoryError`` halve and retry.

    >>> calls = []
    >>> def fn(rows):  # "runs out of memory" above 2 rows
    ...     calls.append(len(rows))
    ...     if len(rows) > 2:
    ...         raise torch.OutOfMemoryError("CUDA out of memory")
    ...     return rows.float().unsqueeze(-1)
    >>> chunks = HalvingChunks(8)
    >>> chunks.run(fn, 5).squeeze(-1).tolist(), calls, chunks.size
    ([0.0, 1.0, 2.0, 3.0, 4.0], [5, 2, 2, 1], 2)
    """

    def __init__(self, size: int | None) -> None:
        self.size = size

    def run(self, fn: Callable[[torch.Tensor], torch.Tensor], n_rows: int) -> torch.Tensor:
        rows = torch.arange(n_rows)
        out: list[torch.Tensor] = []
        start = 0
        while start < n_rows:
            chunk = rows[start : start + (self.size or n_rows)]
            oom = False
            try:
                out.append(fn(chunk))
            except torch.OutOfMemoryError:
                if len(chunk) == 1:
                    raise
                oom = True  # handled outside the except block, once the traceback's tensors are released
            if oom:
                self.size = max(1, len(chunk) // 2)
                log.warning("out of memory in a no-grad forward of %d rows; retrying with %d", len(chunk), self.size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            start += len(chunk)
        return torch.cat(out)
