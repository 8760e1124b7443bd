"""Rayleigh's data plane: the Ray Serve application around vLLM and the local runner."""
