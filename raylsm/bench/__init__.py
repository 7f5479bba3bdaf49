"""Benchmarks and trace tools behind the `raylsm bench ...` commands.

Owns measuring, never storing: `store_bench` (one shard store against SGLang's HiCacheFile, plain
RocksDB BlobDB and the raw disk, `raylsm bench store`) with its baseline adapters in `baselines`.
Called only by `raylsm.cli`; nothing in the storage, Ray or SGLang layers imports this package.
"""
