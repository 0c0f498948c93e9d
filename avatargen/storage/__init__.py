"""Where the shared state lives: the bucket folders and `data_dir` (the default), or a Redis.

With `[storage] backend = "redis"` the buckets, the unique claim, the visitor allowance, the fallback
retirement, the cost ledger, the generator lease and the run's events live in one Redis that any number
of `avatargen serve` replicas share; each `redis_*` module holds one of them. Every call that reaches
Redis raises `StorageUnavailable` (and nothing else from the client library) when Redis is down, slow or
refusing writes, after at most `[storage] timeout`, so callers can fall back.
"""
