"""trainer: a config-driven command-line trainer for image classification."""

__version__ = "0.1.0"
