"""Cove: a self-hostable, open implementation of the Hugging Face system."""

__version__ = "0.1.0"
