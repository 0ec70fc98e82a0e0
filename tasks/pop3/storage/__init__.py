"""Where saved mail goes, and what every save directory promises.

One interface (``base.Storage``) and two implementations behind it: a local folder
(``local``: a path, or a ``file://`` URL) and fsspec storage (``objects``: S3, GCS, Azure;
``sftp``). Above it, written once for both: the message store (``store``), the journal
(``journal``) and the outbox (``outbox``). Nothing above the seam asks which one it has.

Each implementation keeps the same promises (one parametrised suite tests them against
each, tests/test_storage_promises.py):

- **Atomic publish**: a message folder appears whole or not at all (a rename, or its
  ``.complete`` marker written last), and every name fits the back-end's limit (a longer
  one is shortened deterministically; the marker keeps the full name).
- **A durability barrier before QUIT**: fsync of the files and their folders locally, the
  store's acknowledgement of every write remotely.
- **Private modes** where the back-end has modes (local, sftp): 0700 folders, 0600 files.
- **No followed links** in the state area (``.pop3mail``).
- **One message's storage fault is that message's failure**; an unreachable store is the
  run's.
- **Only durable protocols** (``tasks/pop3/locations.py``).
- **Verified removal**: DELE only after the journal record and the folder's marker have been
  read back and match the message.

Import the submodules (``storage.store``...); this package itself imports nothing.
"""
