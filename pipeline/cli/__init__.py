"""The command line (`python -m pipeline`): users and keys, bulk upload, gc, reconcile, the DLQ
tools, backup and restore of a data directory.

May import: anything in `pipeline`. Nothing imports it.
"""
