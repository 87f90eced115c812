"""Data: the GTEA61 folder layout, datasets and loaders, augmentation, the packed cache, clips held on the
device, and a synthetic data set in that layout (preparation from raw video will join as ``prepare/``)."""
