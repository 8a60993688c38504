"""Orchestration: a config becomes runs (typed_configs, groups), each method a row of one table
(paradigms), its pretraining (pretraining) and fine-tuning trained by the runner, and the whole
run with its outputs (experiment)."""
