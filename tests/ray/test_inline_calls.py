"""ShardConfig.inline_reply_bytes: the shard actor's worker process starts with Ray's inline-reply
limit in its environment (so replies up to it skip the object stores), and data still round-trips
byte for byte through replies far above Ray's default 100 KiB limit."""

from __future__ import annotations

import numpy as np
import ray

from raylsm.config import INLINE_ENV

SHARD_UNITS = 1
INLINE = 16 << 20


def test_a_shard_with_inline_replies_has_the_limit_in_its_process_and_serves_right_bytes(local_ray, tier_factory,
                                                                                         pages):
    tier = tier_factory(shard={"inline_reply_bytes": INLINE})
    ring = tier.wait_for_shards(1)
    (name,) = ring["shards"]
    env = ray.get(tier.shard(name).__ray_call__.remote(lambda actor: __import__("os").environ.get(INLINE_ENV)),
                  timeout=60)
    assert env == str(INLINE)
    client = tier.client(same_node_fast_path=False)  # every byte through the shard's replies
    chain = pages.chain("inline", 16)
    values = pages.values(chain, nbytes=256 << 10)  # 4 MiB in one reply: far above 100 KiB, below INLINE
    assert all(client.put(pages.namespace, chain, [], values))
    out = pages.buffers(len(chain), nbytes=256 << 10)
    assert client.get_into(pages.namespace, chain, [], out) == [True] * len(chain)
    assert all(np.array_equal(got, want) for got, want in zip(out, values))
