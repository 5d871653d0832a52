"""Jinja2 templates, one folder per component; installed as the package ensemble._templates."""
