"""The folders backend (`[storage] backend = "folders"`, the default): the buckets as folders, the visitor
allowance, the faces and the cost ledger as SQLite files under `server.data_dir`, and a lock file for
the generator. Every process of one machine shares them through the filesystem, its renames and flocks.

- `bucket`: one bucket folder (`Bucket`, blocking) and `open_buckets`; a `Bucket` is composed of one part
  per idea: `paths` (where each file lives; placing and removing one whole), `index` (the ids in memory),
  `images` (read, publish, delete, keep), `held` (what the safety gate held back), `claims` (uniques
  taken out for one visitor) and `repair` (start-up recovery, and the background check and framing).
- `folder_bucket`: a bucket folder as a `StoredBucket` (worker threads, and the server's upkeep).
- `allowance`, `faces`, `ledger`: the SQLite files, and each as its protocol (`FolderAllowance`,
  `FolderFaces`, `FileLedger`).
- `lock`: the generator's lock file and the data folder's in-use lock.
- `sqlite`: how every one of those SQLite files is opened.

Nothing here imports `avatargen.storage.redis`; what both backends share is in `avatargen.storage`.
"""
