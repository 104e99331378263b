"""The local backend: every piece of state under one directory, made of real parts.

Objects are files written atomically (temporary file, fsync, rename) and indexed in SQLite;
the queue, its dead-letter queue, records and accounts live in the same SQLite database in WAL
mode. Nothing here talks to AWS: this package imports the standard library, `pipeline`'s pure
modules (errors, formats, the shared data types) and nothing from `web`.
"""
