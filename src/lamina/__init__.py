"""Lamina: an open-source cloud for virtual appliances."""

__version__ = "0.1.0"
