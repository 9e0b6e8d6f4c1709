"""Measure what a reduction costs on real data: the task metric of a bundle's reduced and full
graphs, and how closely the reduced graph agrees with the full one."""
