"""Monitoring: the service's Prometheus metrics."""
