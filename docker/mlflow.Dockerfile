# MLflow tracking server with the PostgreSQL driver baked in, so the container installs nothing at start.
# Pinned to the client version in constraints.txt. Built by compose.yaml (service `mlflow`).
FROM ghcr.io/mlflow/mlflow:v3.17.2
# Flask-WTF: the basic-auth app (--app-name basic-auth) needs it for CSRF checks (mlflow[auth]).
RUN pip install --no-cache-dir psycopg2-binary==2.9.13 Flask-WTF==1.3.0
