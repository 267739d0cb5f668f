"""pydask-deploy: a long-lived Dask cluster on machines you already have."""

__version__ = "0.1.0"
