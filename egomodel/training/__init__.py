"""Training: the three-stage engine (``engine.train``), one epoch and one evaluation pass (``steps``),
stages as data (``stages``), the losses, the stage-1 feature cache, the two-stream model's stream sources,
and the keys under which trials share stage results (``stage_keys``). See docs/design.md §5."""
