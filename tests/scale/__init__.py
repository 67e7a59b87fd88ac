"""Tests of `causalgeom.scale`."""
