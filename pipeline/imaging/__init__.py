"""Imaging: decoding and renditions, variant specs and their operations, the worker pool and its
fair queue.

May import: `config`, `pipeline.core`. Only `pipeline.imaging.renditions` and what it runs (the
operations, `operate`, the metadata reader, `metadata`, and the face finder, `faces`) import
the decoders (pyvips, Pillow, OpenCV), and only worker processes import them.
"""
