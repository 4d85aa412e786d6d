"""Workers: processes (or tasks of the server) that execute background runs from the job queue.

`miniagent worker --concurrency N` runs one; see [`Worker`][miniagent.worker.Worker] and `docs/scaling.md`.
"""

from __future__ import annotations

from ._fair import FairScheduler
from ._worker import Worker, WorkerStats

__all__ = ["FairScheduler", "Worker", "WorkerStats"]
