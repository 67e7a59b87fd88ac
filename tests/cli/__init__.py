"""Tests of `causalgeom.cli`."""
