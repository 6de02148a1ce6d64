"""Artifact formats at the ground of the package: plain files and JSON, no torch."""
