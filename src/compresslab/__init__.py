"""compresslab: compress trained networks and measure which function the child kept."""

__version__ = "0.1.0"
