"""The study: every objective x every evaluation mode, scheduled over the machine's cores or GPUs."""
