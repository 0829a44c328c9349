"""Analysers: each reads a loaded image and fills its part of the `Report`."""
