"""The data contract: schema v1 (`schema`), one run's Zarr store (`store`), a study folder (`study`), third-party dumps (`adapters`)."""
