#!/usr/bin/env bash
# Install (apt, when missing) and start a local PostgreSQL for the test suite, then print the URL
# tests read from BALLAST_TEST_PG_URL. Idempotent; needs root (or sudo) on Debian/Ubuntu.
set -euo pipefail
if [ "$(id -u)" -eq 0 ]; then SUDO=""; AS_PG="runuser -u postgres --"; else SUDO="sudo"; AS_PG="sudo -u postgres"; fi
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >&2
fi
version=$(ls /usr/lib/postgresql | sort -V | tail -1)
if ! pg_lsclusters -h | grep -q "^$version main"; then
  $SUDO pg_createcluster "$version" main >&2
fi
$SUDO pg_ctlcluster "$version" main start >&2 2>/dev/null || true
for _ in $(seq 1 50); do
  pg_isready -q -h 127.0.0.1 && break
  sleep 0.2
done
$AS_PG psql -q -v ON_ERROR_STOP=1 >&2 <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'ballast') THEN
    CREATE ROLE ballast LOGIN CREATEDB PASSWORD 'ballast';
  END IF;
END $$;
-- DROP DATABASE ... WITH (FORCE) must be able to end an autovacuum worker that happens to run there.
GRANT pg_signal_backend TO ballast;
SQL
echo "postgresql://ballast:ballast@127.0.0.1:5432/postgres"
