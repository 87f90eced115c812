"""How a search runs on Ray: the searcher and the scheduler (``searcher``: Optuna's TPE inside Ray Tune,
ASHA), the trainable that runs egomodel's stages for one trial (``trainable``), and the store through which
trials share identical stage results (``stage_store``)."""
