"""A shard whose capacity is more than its disk can hold refuses to open, and `raylsm status` says
why (issue 8, section 9): the operator sees the CapacityError, not a shard stuck "starting"."""

from __future__ import annotations

import shutil

from raylsm.status_report import format_status

SHARD_UNITS = 1


def test_a_capacity_above_the_disk_is_refused_and_shown_by_status(local_ray, tier_factory, data_dir, tools):
    too_much = (shutil.disk_usage(data_dir).free // (1 << 20) + (1 << 20)) << 20  # free space + 1 TiB
    tier = tier_factory(shard={"store": {"capacity_bytes": too_much}})

    def failed():
        tier.reconcile()
        shards = tier.status()["shards"]
        return shards if shards and shards[0]["state"] == "failed" else None

    shards = tools.wait_until(failed, 60, "the shard to be reported failed")
    assert "CapacityError" in shards[0]["error"] and "more than its disk can hold" in shards[0]["error"]
    assert tier.ring()["shards"] == {}
    table = format_status(tier.status())
    assert "failed" in table and "more than its disk can hold" in table


def test_raylsm_up_fits_the_default_capacity_to_the_local_disk_and_refuses_an_explicit_one(tmp_path):
    import pytest

    from raylsm.config import TierConfig
    from raylsm.errors import CapacityError
    from raylsm.lifecycle import fit_local_capacity

    free = shutil.disk_usage(tmp_path).free
    config = TierConfig.from_dict({"shard": {"data_dir": str(tmp_path / "data"),
                                             "store": {"capacity_bytes": (free // 4096) * 4096}}})
    fitted, note = fit_local_capacity(config, shards=4, explicit=False)
    assert fitted.shard.store.capacity_bytes * 4 <= free and "lowered" in note
    assert fit_local_capacity(fitted, shards=4, explicit=True) == (fitted, None)
    with pytest.raises(CapacityError, match="do not fit"):
        fit_local_capacity(config, shards=4, explicit=True)
