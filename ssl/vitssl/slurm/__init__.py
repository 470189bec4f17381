"""Running on SLURM: where a task stands in its allocation, submitting jobs, following their states."""
