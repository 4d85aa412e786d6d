"""Memory for agents. Working memory fits a long conversation to the model's context window before each request.

```python
from miniagent import Agent
from miniagent.memory import WorkingMemory

agent = Agent(model="test", working_memory=WorkingMemory(max_tokens=4_000))
```

See [`WorkingMemory`][miniagent.memory.WorkingMemory] for how a history is fitted, scored and summarized.
"""

from __future__ import annotations

from ._long_term import EXTRACTION_INSTRUCTIONS, ExtractedFacts, LongTermMemory
from ._summary import SUMMARY_INSTRUCTIONS, InMemorySummaryStore, StoredSummary, SummaryStore
from ._tokens import DEFAULT_CONTEXT_WINDOW, TokenCounter, context_window_of, estimate_tokens
from ._working import HistoryFit, PinSpec, WorkingMemory

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "EXTRACTION_INSTRUCTIONS",
    "SUMMARY_INSTRUCTIONS",
    "ExtractedFacts",
    "HistoryFit",
    "InMemorySummaryStore",
    "LongTermMemory",
    "PinSpec",
    "StoredSummary",
    "SummaryStore",
    "TokenCounter",
    "WorkingMemory",
    "context_window_of",
    "estimate_tokens",
]
