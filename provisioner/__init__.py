"""pypapo: a private Python package index on Google Cloud, gated by IAM alone."""

__version__ = "0.1.0"
