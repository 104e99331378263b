"""The HTTP API of the image service (aiohttp)."""
