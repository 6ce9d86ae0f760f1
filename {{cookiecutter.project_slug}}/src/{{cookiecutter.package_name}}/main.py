"""The ASGI app `uvicorn {{ cookiecutter.package_name }}.main:app` serves, set up from the environment.

Importing this module reads the settings; tests and tools build apps with
`{{ cookiecutter.package_name }}.app.create_app(settings)` instead.
"""

from .app import create_app, settings_for_process

app = create_app(settings_for_process())
