"""Imaging: decoding and renditions, variant specs and their operations, the worker pool and its
fair queue.

May import: `config`, `pipeline.core`. Only `pipeline.imaging.renditions` and what it runs (the
operations, `operate`, and the metadata reader, `metadata`) import the decoders (pyvips,
Pillow), and only worker processes import them.
"""
