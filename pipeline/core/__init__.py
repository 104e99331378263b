"""The domain and its ports: errors, items and conditions, image records, accounts, usage and
reservations, the ports' protocols and data types, the S3 event, format facts and header
screening, metrics and logs.

May import: the standard library, `config`, third-party libraries that load no decoder; of
`pipeline`, only `pipeline.core`.
"""
