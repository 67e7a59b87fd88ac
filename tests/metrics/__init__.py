"""Tests of `causalgeom.metrics`."""
