"""Tests of `causalgeom.pipeline`."""
