"""Benchmarks and trace tools behind the `raylsm bench ...` commands.

Owns measuring, never storing. `store_bench` is `raylsm bench store` (one shard store against
SGLang's HiCacheFile, plain RocksDB BlobDB and the raw disk); `baselines` holds its adapters for
those three. Other modules here (trace replay and its models) describe themselves. Called only by
`raylsm.cli`; nothing in the storage, Ray or SGLang layers imports this package.
"""
