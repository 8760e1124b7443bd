"""Rayleigh's control plane: the ModelDeployment API, its CRD, the planner and the kopf operator."""

__version__ = "0.1.0"
