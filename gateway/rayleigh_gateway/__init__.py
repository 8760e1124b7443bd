"""Rayleigh's gateway: authentication, allow-lists and rate limits in front of the models."""
