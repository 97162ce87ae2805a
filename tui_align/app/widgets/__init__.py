"""Widgets used by the app's screens."""
