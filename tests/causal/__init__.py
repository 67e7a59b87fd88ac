"""Tests of `causalgeom.causal`."""
