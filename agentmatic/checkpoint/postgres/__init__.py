"""Postgres checkpoints: `PostgresSaver`, and the seed's `compact` and `upgrade`.

```python
from agentmatic.checkpoint.postgres import compact, upgrade

await compact(POSTGRES_URL, retention_days=30)   # old checkpoints out
await upgrade(POSTGRES_URL)                      # LangGraph's tables in
```

Both are awaitable and safe to run again. The saver's tables are described
in `schema`; how values are laid out in `saver` and `lists`.
"""

from __future__ import annotations

from agentmatic.checkpoint.postgres.maintenance import (
    UpgradeReport,
    compact,
    compact_sync,
    upgrade,
    upgrade_sync,
)
from agentmatic.checkpoint.postgres.saver import PostgresSaver

__all__ = [
    "PostgresSaver",
    "UpgradeReport",
    "compact",
    "compact_sync",
    "upgrade",
    "upgrade_sync",
]
