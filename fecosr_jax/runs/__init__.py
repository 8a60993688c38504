"""Orchestration: a config becomes runs (typed_configs, groups), each method a row of one table
(paradigms), its pretraining (pretraining) and fine-tuning trained by the runner, the checks
before anything is written (inputs), and the whole run with its outputs (experiment)."""
