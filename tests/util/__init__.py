"""Tests of `causalgeom._util`."""
