"""Fakes for what the tests cannot run for real: only the Vast.ai API (``fakes.vast``)."""
