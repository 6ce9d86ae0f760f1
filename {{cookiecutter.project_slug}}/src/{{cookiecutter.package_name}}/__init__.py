"""The {{ cookiecutter.package_name }} service: a FastAPI API in front of a background-job engine."""
