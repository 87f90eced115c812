"""Files a person opens about a trained model: confusion matrices and per-class accuracy
(``confusion``), training curves, CAM overlays and feedback β/γ maps (``pictures``), and the helper
that pastes image grids into one picture (``mosaic``)."""
