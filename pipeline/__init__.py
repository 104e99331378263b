"""The image pipeline: the ports and their AWS backend, the S3 event consumer, jobs, imaging,
the worker pool, verdicts, records and accounts, the DLQ tools, reconciliation and the CLI.

May import: the standard library, `config`, third-party libraries. Never `web`. `local` only in
`pipeline.backends`, the one place that picks a backend (lazily, so AWS processes never load it).
Only `pipeline.imaging` imports the decoders (pyvips, Pillow): it runs in worker processes.
"""
