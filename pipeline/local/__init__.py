"""The local backend: every piece of state under one directory, made of real parts.

Objects are files written atomically (temporary file, fsync, rename) and indexed in SQLite;
the queue, its dead-letter queue, records and accounts live in the same SQLite database in WAL
mode.

May import: the standard library, `config`, `pipeline.core`. Never another backend, never an AWS
library.
"""
