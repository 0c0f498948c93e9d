"""Where the shared state lives: the bucket folders and `data_dir` (the default), or a Redis.

With `[storage] backend = "redis"` the buckets, the unique claim, the visitor allowance, the fallback
retirement, the cost ledger, the generator lease and the run's events live in one Redis that any number
of `avatargen serve` replicas share. Each backend is a subpackage of its own (`files`, `redis`); what
both share is here, and imports point from the backends to it, never between them:

- `errors`: what storage raises (`ImageNotFound`, `BadImage`, `StorageUnavailable`, `LeaseLost`).
- `models`: image ids and the stored values (`ImageRecord`, `Claim`, `Recovery`, `Face`, `AllowanceState`).
- `spend`: the ledger's entries and what they add up to (today, this month, by day).
- `protocols`: what the server and the generator need from a backend.
- `index`, `allowance_memo`, `face_memo`, `framing`: the pieces of behaviour both backends use.
- `backend`: choosing the backend for `[storage] backend`; `migrate`: moving everything between them.
"""
