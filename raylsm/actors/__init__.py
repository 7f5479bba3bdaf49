"""The Ray actor that wraps one ShardStore, its placement on a node, and its metrics."""
