"""Data: the GTEA61 folder layout, image loading, and a synthetic data set in that layout."""
