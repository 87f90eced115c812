"""Data: the GTEA61 folder layout, datasets and loaders, augmentation, the packed cache, clips held on the
device, a synthetic data set in that layout (and raw ego-motion videos with true masks, ``synthetic_ego``),
and preparation from raw video into the layout (``prepare/``, the command ``python -m egomodel.prepare``)."""
