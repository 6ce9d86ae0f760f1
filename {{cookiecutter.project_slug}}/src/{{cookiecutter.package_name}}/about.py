"""The name and description the API documentation shows: the answers given to the template."""

TITLE = {{ cookiecutter.project_name | jsonify }}
DESCRIPTION = {{ cookiecutter.description | jsonify }}
