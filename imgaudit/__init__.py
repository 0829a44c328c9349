"""imgaudit: what is inside a built container image, what it costs, and whether its binaries will start."""

__version__ = "0.1.0"
