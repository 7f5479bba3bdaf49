"""The controller: membership, shard lifecycle, ring versions and (later) tuning and autoscaling."""
