"""One shard's storage engine over one directory: a RocksDB pointer index plus append-only segment
files holding the pages (value separation). Imports no Ray, SGLang or torch.

Modules in the order data flows: page_key (key encoding), shard_store (the API), admission,
segment (files and vectored I/O), format (the on-disk format), pointer_index (RocksDB), read_plan,
reinsertion (eviction), recovery (open), stats, config.
"""

from raylsm.store.config import StoreConfig
from raylsm.store.shard_store import ShardStore

__all__ = ["ShardStore", "StoreConfig"]
