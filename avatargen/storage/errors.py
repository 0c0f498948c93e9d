"""The errors storage raises, whichever the backend: what callers catch, never a backend's own exceptions.

An image that is not there (`ImageNotFound`, or `BadImage` when it was found broken and set aside), a
store that cannot answer now (`StorageUnavailable`: visitors get a fallback, the generator pauses), and a
generator write refused because another process holds the generator lease now (`LeaseLost`).
"""

from __future__ import annotations


class ImageNotFound(LookupError):
    """No image with that id in the bucket (never published, claimed or deleted meanwhile)."""


class BadImage(ImageNotFound):
    """The image's file is not a whole WebP image: it was set aside, so it is no longer in the bucket."""


class StorageUnavailable(Exception):
    """The store did not do what was asked within the timeout (Redis down, slow, loading, read-only, full).

    The operation may or may not have happened; every write the product makes is safe either way (a
    claim that happened unseen only loses that unique, it is never served twice).
    """


class LeaseLost(Exception):
    """A generator write was refused: another replica holds the generator lease now (its fencing token
    is newer than the one this write carried)."""


class LeaseUnconfirmed(LeaseLost):
    """The generator lease may have lapsed because Redis did not answer for as long: no replica is known to
    hold it, and none can take it until Redis answers. The machine may still be stopped (a stop costs
    nothing, and nobody else can stop it meanwhile); it must not be started."""
