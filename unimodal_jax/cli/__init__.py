"""Command-line entry points, one module per `unimodal-<command>`; the shared flag handling is in common.py."""
