"""Torch: datasets (`data`), models and their head (`models`), training (`train`), attacks (`attacks`), extraction into dumps (`extract`). Depends only on `dump` and `_util`."""
