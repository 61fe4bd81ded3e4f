#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379) are up for the
# tests: start them when they are down, install Debian's packages when they are missing.
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! command -v pg_ctlcluster >/dev/null || ! command -v redis-server >/dev/null; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql redis-server >/dev/null
fi
# The annotator page test drives Debian's Chromium through Playwright (never `playwright install`).
if [ ! -x /usr/bin/chromium ]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi

if ! pg_up; then
  ver=$(ls /etc/postgresql | sort -V | tail -1)
  conf=/etc/postgresql/$ver/main/pg_hba.conf
  # Tests connect as postgres over TCP without a password (trust on loopback only).
  if ! grep -q "activeseg-tests" "$conf"; then
    $SUDO sed -i '1i host all all 127.0.0.1/32 trust # activeseg-tests\nhost all all ::1/128 trust # activeseg-tests' "$conf"
  fi
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start
fi
if ! redis_up; then
  $SUDO mkdir -p /var/lib/redis /var/log/redis
  $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
for _ in $(seq 1 60); do
  if pg_up && redis_up; then echo "services: PostgreSQL and Redis are up"; exit 0; fi
  sleep 0.5
done
echo "services: PostgreSQL or Redis did not come up" >&2
exit 1
