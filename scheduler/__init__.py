"""The heat-scheduler service."""
