"""Webhooks: the outbox of events, their delivery with retries, and the rules for their URLs.

May import: `config`, `pipeline.core`.
"""
