"""Data preparation from raw video into the GTEA61 layout (``python -m egomodel.prepare``, docs/prepare.md):
where frames come from (``sources``), readers of each data set's annotations (``manifest``, ``egtea``,
``epic``), warp flow and motion maps (``motion``), the per-clip worker that publishes a clip whole
(``clip``), a run with its progress bar and summary (``run``) and filling a root in place (``fill``)."""
