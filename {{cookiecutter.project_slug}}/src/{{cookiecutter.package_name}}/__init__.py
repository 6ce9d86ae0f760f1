"""A FastAPI service in front of a background-job engine."""
