"""pico: a reproducible, data-versioned pipeline from raw text to an aligned small language model."""

__version__ = "0.1.0"
