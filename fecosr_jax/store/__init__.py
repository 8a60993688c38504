"""Persistence: checkpoints (checkpoint, checkpoint_layout), resuming a run (resume), atomic
files on local disks and gs:// (files), the metrics log (metrics_log), and one writer per
workdir (lease)."""
