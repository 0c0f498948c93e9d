"""The Redis backend (`[storage] backend = "redis"`): one Redis that any number of `avatargen serve`
replicas share.

- `connection`: the client of one process (`RedisStorage`), its deadline and key names, and `Outage`.
- `buckets`: a bucket in Redis (`RedisBucket`); `fresh_look`: the shared look it serves fallbacks after.
- `allowance`, `faces`, `ledger`: the visitor allowance, the faces and the cost ledger.
- `lease`: the generator lease with its fencing token; `events`: the run's events relayed between replicas.

Every call that reaches Redis raises `avatargen.storage.errors.StorageUnavailable` (never the client
library's own exceptions) when Redis is down, slow or refusing writes, after at most `[storage] timeout`.
Nothing here imports `avatargen.storage.files`; what both backends share is in `avatargen.storage`.
"""
