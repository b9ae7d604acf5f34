#!/usr/bin/env bash
# Start the machine's PostgreSQL and Redis when they are down, for `make test`.
# The integration tests use them for real (the MLflow server's backend store, prediction
# history, rate limits) and FAIL when they are missing; this script only starts what is
# installed and not yet answering, so re-runs cost nothing. The S3 store (seaweedfs) and
# the MLflow server are started by the tests themselves.
set -euo pipefail

pg_up() { command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; }
redis_up() { command -v redis-cli >/dev/null && [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; }

if ! pg_up; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    for version in $(ls /etc/postgresql); do
      echo "starting PostgreSQL $version"
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
    for _ in $(seq 1 30); do pg_up && break; sleep 0.5; done
    pg_up || { echo "PostgreSQL did not start" >&2; exit 1; }
  else
    echo "PostgreSQL is not installed here; the integration tests will fail" >&2
  fi
fi

if ! redis_up; then
  if command -v redis-server >/dev/null; then
    echo "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
      --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 1 30); do redis_up && break; sleep 0.2; done
    redis_up || { echo "Redis did not start" >&2; exit 1; }
  else
    echo "Redis is not installed here; the tests that need it will fail" >&2
  fi
fi
