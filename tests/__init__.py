"""Tests of the server-core template: its hooks and what it renders."""
