"""Imaging: decoding and renditions, variant specs, the worker pool and its fair queue.

May import: `config`, `pipeline.core`. Only `pipeline.imaging.renditions` imports the decoders
(pyvips, Pillow), and only worker processes import it.
"""
