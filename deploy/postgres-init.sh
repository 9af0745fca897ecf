#!/usr/bin/env bash
# Tend's contact store lives beside Airflow's metadata database, in its own database and role.
# Run once by the postgres image, on an empty data volume (/docker-entrypoint-initdb.d); the
# password comes from TEND_DB_PASSWORD (.env), never from this file.
set -euo pipefail
: "${TEND_DB_PASSWORD:?set TEND_DB_PASSWORD in .env}"
psql -v ON_ERROR_STOP=1 -v tend_password="$TEND_DB_PASSWORD" \
     --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE tend LOGIN PASSWORD :'tend_password';
CREATE DATABASE tend OWNER tend;
SQL
