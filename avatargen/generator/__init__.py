"""The generator: runs that fill the buckets on a rented GPU machine, and the machine always ends off."""

from avatargen.generator.errors import NothingToDo, NotRunning, RunActive, RunFailed
from avatargen.generator.generator import AvatarGenerator
from avatargen.generator.views import bucket_levels, cost_summary

__all__ = ["AvatarGenerator", "NotRunning", "NothingToDo", "RunActive", "RunFailed", "bucket_levels", "cost_summary"]
