"""DocBatch: a self-hostable batch document service."""

__version__ = "0.1.0"
