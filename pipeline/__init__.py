"""The image pipeline, in rooms by role: `core` (the domain and its ports), the two backends
`aws` and `local`, `imaging`, `consumer`, `webhooks` and `cli`; `backends` picks a backend.

Each room's `__init__` says what it may import; `tests/test_layering.py` holds them to it.
May import (this package's own modules, `__main__`): `pipeline.cli`. Never `web`. Only
`pipeline.imaging.renditions` imports the decoders (pyvips, Pillow): it runs in worker processes.
"""
