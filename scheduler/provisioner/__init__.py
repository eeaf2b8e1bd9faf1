"""Provisioners: how runner instances are started and stopped (kubernetes, local, none)."""
