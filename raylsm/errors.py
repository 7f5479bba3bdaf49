"""Every typed error raylsm raises, in one place.

Rule (as in LMCache's exceptions module): a failed read is a miss, not an exception. These errors are
for real failures and bad input; the SGLang adapter turns each of them into a miss plus a counter.
"""


class RayLSMError(Exception):
    """Base class of every raylsm error."""


class ConfigError(RayLSMError, ValueError):
    """A configuration value is out of range or of the wrong type; the message names the field."""


class CapacityError(ConfigError):
    """A capacity the disk cannot hold (more than the store's bytes plus the file system's free space)."""


class ValueTooLargeError(RayLSMError, ValueError):
    """A value does not fit in one segment; the message names the limit."""


class FormatVersionError(RayLSMError):
    """A store directory was written by an incompatible on-disk format version."""


class StoreLockedError(RayLSMError):
    """Another process (or another open in this one) holds the store directory."""


class StoreClosedError(RayLSMError):
    """An operation was attempted on a closed store."""


class CorruptionError(RayLSMError):
    """An on-disk structure failed its checksum or framing check."""


class ShardUnavailableError(RayLSMError):
    """A shard is dead, restarting or did not answer in time."""
