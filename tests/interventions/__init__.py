"""Tests of `causalgeom.interventions`."""
