# MLflow tracking server with the PostgreSQL driver baked in, so the container installs nothing at start.
# Pinned to the client version in constraints.txt. Built by compose.yaml (service `mlflow`).
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir psycopg2-binary==2.9.13
