from vitssl.tracking.mlflow_run import DEFAULT_TRACKING_URI, MlflowRun, git_commit, resolve_tracking_uri

__all__ = ["DEFAULT_TRACKING_URI", "MlflowRun", "git_commit", "resolve_tracking_uri"]
