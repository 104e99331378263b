"""The HTTP API of the image service (aiohttp): the guarded server, handlers, serving and views,
keys, links, quotas, the auth throttle, the UI.

May import: the standard library, `config`, `pipeline` (through its ports and domain modules),
third-party libraries. Never `local` (the backend comes from `pipeline.backends`), and never an
image decoder: web processes screen uploads in pure Python and do not import pyvips or Pillow.
"""
