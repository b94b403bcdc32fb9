"""Shared by the services and flows: settings, events, registry, features."""
