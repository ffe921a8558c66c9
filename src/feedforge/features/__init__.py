"""Ranking features: definitions, offline (point-in-time) and online computation, objectives."""
