#!/bin/sh
# Runs once, when PostgreSQL creates its data folder (/docker-entrypoint-initdb.d): one
# database and owner each for MLflow and Prefect, with passwords from the environment.
# Prefect needs pg_trgm, created here as the superuser.
set -e
if [ -z "${MLFLOW_DB_PASSWORD:-}" ] || [ -z "${PREFECT_DB_PASSWORD:-}" ]; then
  echo "MLFLOW_DB_PASSWORD and PREFECT_DB_PASSWORD must be set" >&2
  exit 1
fi
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
  -v mlflow_password="$MLFLOW_DB_PASSWORD" -v prefect_password="$PREFECT_DB_PASSWORD" <<'SQL'
CREATE USER mlflow WITH PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE USER prefect WITH PASSWORD :'prefect_password';
CREATE DATABASE prefect OWNER prefect;
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
SQL
