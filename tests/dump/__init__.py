"""Tests of `causalgeom.dump`."""
