"""Sweep and tune: measure reduction configs on real data and pick the one a device can afford."""
