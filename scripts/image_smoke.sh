#!/usr/bin/env bash
# Smoke test of the Docker image: build it, then run its three roles (code location gRPC server,
# webserver, daemon) against a local PostgreSQL and Redis, load demo data, materialize one
# partition inside the image and let the daemon run one forecast request from the queue.
#
#   scripts/image_smoke.sh [CONTEXT_DIR]        (default: the repository this script is in)
#
# Needs: podman or docker (ENGINE=docker), the base image python:3.11-slim-bookworm (pulled when
# missing; BUILD_OPTS=--pull=never uses a local copy only), PostgreSQL and Redis reachable from
# the host network. Host tools are not needed: databases and Redis are driven from inside the image.
# Everything it creates (containers, two databases, the Redis database's keys) is removed at
# the end; the image is kept.
#
# Environment (defaults in brackets):
#   ENGINE [podman]  IMAGE [forecast-pipeline:smoke]  BUILD [1: build; 0: use IMAGE as is]
#   PG_HOST [127.0.0.1]  PG_PORT [5432]  PG_USER [postgres]  PG_PASSWORD []   (needs CREATEDB)
#   DAGSTER_DB [dagster_smoke]  APP_DB [fp_smoke]        (must not exist; created and dropped)
#   REDIS_URL [redis://127.0.0.1:6379/9]                  (must be empty; flushed at the end)
#   GRPC_PORT [4400]  WEB_PORT [3300]  PARTITION [2025-11-10]  KEEP [0: 1 keeps everything]
#   BUILD_OPTS []  extra options for `build`;  RUN_OPTS []  extra options for every `run`
#                 (e.g. --runtime runc on odd hosts)
#   STRICT_PERMS [1: fail when the app or instance config is writable by the container's user;
#                 0: only warn]
set -euo pipefail

CONTEXT=${1:-$(cd "$(dirname "$0")/.." && pwd)}
ENGINE=${ENGINE:-podman}
IMAGE=${IMAGE:-forecast-pipeline:smoke}
BUILD=${BUILD:-1}
PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}
PG_USER=${PG_USER:-postgres}
PG_PASSWORD=${PG_PASSWORD:-}
DAGSTER_DB=${DAGSTER_DB:-dagster_smoke}
APP_DB=${APP_DB:-fp_smoke}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/9}
GRPC_PORT=${GRPC_PORT:-4400}
WEB_PORT=${WEB_PORT:-3300}
PARTITION=${PARTITION:-2025-11-10}
KEEP=${KEEP:-0}
STRICT_PERMS=${STRICT_PERMS:-1}
read -r -a RUN_OPTS <<< "${RUN_OPTS:-}"
read -r -a BUILD_OPTS <<< "${BUILD_OPTS:-}"

TAG=smoke$$
C_GRPC=fp-$TAG-grpc
C_WEB=fp-$TAG-web
C_DAEMON=fp-$TAG-daemon
ENV_FILE=$(mktemp)
DBS_CREATED=0

log() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }
fail() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }

PG_PASS_URL=${PG_PASSWORD:+:$PG_PASSWORD}
cat > "$ENV_FILE" <<EOF
DAGSTER_PG_HOST=$PG_HOST
DAGSTER_PG_PORT=$PG_PORT
DAGSTER_PG_DB=$DAGSTER_DB
DAGSTER_PG_USER=$PG_USER
DAGSTER_PG_PASSWORD=$PG_PASSWORD
DATABASE_URL=postgresql://$PG_USER$PG_PASS_URL@$PG_HOST:$PG_PORT/$APP_DB
APP_DATABASE_URL=postgresql://$PG_USER$PG_PASS_URL@$PG_HOST:$PG_PORT/$APP_DB
REDIS_URL=$REDIS_URL
FORECAST_WORKERS=1
EOF

# one-off container on the host network with the test environment
in_image() { "$ENGINE" run --rm --network host "${RUN_OPTS[@]}" --env-file "$ENV_FILE" "$IMAGE" "$@"; }
in_image_stdin() { "$ENGINE" run --rm -i --network host "${RUN_OPTS[@]}" --env-file "$ENV_FILE" "$IMAGE" "$@"; }

# PostgreSQL admin statements and Redis commands through the image's own psycopg2 and redis
pg_admin() {
    in_image python -c '
import sys, psycopg2
c = psycopg2.connect(host=sys.argv[1], port=sys.argv[2], user=sys.argv[3], password=sys.argv[4], dbname="postgres")
c.autocommit = True
cur = c.cursor()
cur.execute(sys.argv[5])
print(cur.fetchall() if cur.description else "ok")' "$PG_HOST" "$PG_PORT" "$PG_USER" "$PG_PASSWORD" "$1"
}
redis_py() { in_image python -c "import os, redis; r = redis.Redis.from_url(os.environ['REDIS_URL']); $1"; }

cleanup() {
    local rc=$?
    set +e
    if [ "$rc" -ne 0 ]; then
        for c in "$C_GRPC" "$C_WEB" "$C_DAEMON"; do
            "$ENGINE" container exists "$c" 2>/dev/null || "$ENGINE" inspect "$c" >/dev/null 2>&1 || continue
            echo "--- last log lines of $c"; "$ENGINE" logs "$c" 2>&1 | tail -25
        done
    fi
    if [ "$KEEP" = 1 ]; then
        echo "KEEP=1: left containers $C_GRPC $C_WEB $C_DAEMON, databases $DAGSTER_DB $APP_DB, $REDIS_URL"
    else
        "$ENGINE" rm -f "$C_GRPC" "$C_WEB" "$C_DAEMON" >/dev/null 2>&1
        if [ "$DBS_CREATED" = 1 ]; then
            pg_admin "DROP DATABASE IF EXISTS $DAGSTER_DB" >/dev/null
            pg_admin "DROP DATABASE IF EXISTS $APP_DB" >/dev/null
            redis_py 'r.flushdb()'
        fi
    fi
    rm -f "$ENV_FILE"
    [ "$rc" -eq 0 ] && echo "PASS ($SECONDS s)"
    exit "$rc"
}
trap cleanup EXIT

if [ "$BUILD" = 1 ]; then
    log "build $IMAGE from $CONTEXT"
    "$ENGINE" build "${BUILD_OPTS[@]}" -t "$IMAGE" "$CONTEXT"
fi
"$ENGINE" image inspect "$IMAGE" >/dev/null || fail "no image $IMAGE"

log "user and file permissions in the image"
in_image sh -c '
id
[ "$(id -u)" != 0 ] || { echo "runs as root"; exit 1; }
rc=0
for p in /opt/dagster/app /opt/dagster/app/forecast_pipeline /opt/dagster/app/workspace.yaml "$DAGSTER_HOME/dagster.yaml"; do
    if [ -w "$p" ]; then echo "writable by $(id -un): $p"; rc=1; else echo "read-only: $p"; fi
done
for p in "$DAGSTER_HOME" "$REPORTS_DIR"; do [ -w "$p" ] || { echo "not writable: $p"; rc=1; }; done
exit $rc' || { [ "$STRICT_PERMS" = 0 ] && echo "WARNING: permissions not as intended (STRICT_PERMS=0)"; } \
    || fail "the image's permissions are not as intended"

log "databases and Redis"
[ "$(redis_py 'print(r.dbsize())')" = 0 ] || fail "$REDIS_URL is not empty; pick an empty database"
for db in "$DAGSTER_DB" "$APP_DB"; do
    [ "$(pg_admin "SELECT count(*) FROM pg_database WHERE datname = '$db'")" = "[(0,)]" ] \
        || fail "database $db exists already; pick other names (DAGSTER_DB, APP_DB)"
done
DBS_CREATED=1
pg_admin "CREATE DATABASE $DAGSTER_DB"
pg_admin "CREATE DATABASE $APP_DB"

log "demo data"
in_image forecast-pipeline init-db
in_image forecast-pipeline demo-data --products 300 --customers 400 --as-of "$PARTITION" --seed 7
in_image forecast-pipeline check

log "start the three roles"
"$ENGINE" run -d --name "$C_GRPC" --network host "${RUN_OPTS[@]}" --env-file "$ENV_FILE" "$IMAGE" \
    dagster api grpc -h 0.0.0.0 -p "$GRPC_PORT" -m forecast_pipeline.definitions >/dev/null
"$ENGINE" run -d --name "$C_WEB" --network host "${RUN_OPTS[@]}" --env-file "$ENV_FILE" "$IMAGE" \
    dagster-webserver -h 0.0.0.0 -p "$WEB_PORT" -w workspace.yaml >/dev/null
"$ENGINE" run -d --name "$C_DAEMON" --network host "${RUN_OPTS[@]}" --env-file "$ENV_FILE" "$IMAGE" \
    dagster-daemon run -w workspace.yaml >/dev/null

log "code location: gRPC health"
for _ in $(seq 60); do
    "$ENGINE" exec "$C_GRPC" dagster api grpc-health-check -p "$GRPC_PORT" >/dev/null 2>&1 && break
    sleep 2
done
"$ENGINE" exec "$C_GRPC" dagster api grpc-health-check -p "$GRPC_PORT"

log "webserver: /server_info and the code location"
for _ in $(seq 60); do
    in_image python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$WEB_PORT/server_info', timeout=5)" \
        >/dev/null 2>&1 && break
    sleep 2
done
in_image_stdin python - "$WEB_PORT" <<'PY'
import json, sys, urllib.request as u
base = f"http://127.0.0.1:{sys.argv[1]}"
print(u.urlopen(base + "/server_info", timeout=10).read().decode())
query = ("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
         "locationOrLoadError { __typename ... on PythonError { message } } } } } }")
req = u.Request(base + "/graphql", json.dumps({"query": query}).encode(), {"Content-Type": "application/json"})
entries = json.load(u.urlopen(req, timeout=30))["data"]["workspaceOrError"]["locationEntries"]
print(json.dumps(entries))
bad = [e for e in entries if e["loadStatus"] != "LOADED" or e["locationOrLoadError"]["__typename"] != "RepositoryLocation"]
sys.exit(1 if bad or not entries else 0)
PY

log "materialize partition $PARTITION in the image"
MAT_LOG=$(mktemp)
if ! in_image dagster asset materialize -m forecast_pipeline.definitions --select '*' --partition "$PARTITION" \
        > "$MAT_LOG" 2>&1; then
    tail -40 "$MAT_LOG"; rm -f "$MAT_LOG"; fail "dagster asset materialize exited non-zero"
fi
grep -E 'RUN_SUCCESS|ASSET_CHECK_EVALUATION' "$MAT_LOG" | grep -v '^{' | sed -E 's/.* - ([A-Z_]+ - )/\1/' || true
rm -f "$MAT_LOG"
redis_py "
import json
keys = r.keys('forecast:*')
meta = json.loads(r.get('forecast:metadata:last_run'))
print(len(keys), 'forecast:* keys; last_run:', meta)
assert meta['as_of_date'] == '$PARTITION' and meta['successful'] > 0 and meta['failed'] == 0
"

log "daemon: liveness, then one request from the queue launched by its sensor"
for _ in $(seq 45); do
    "$ENGINE" exec "$C_DAEMON" dagster-daemon liveness-check >/dev/null 2>&1 && break
    sleep 2
done
"$ENGINE" exec "$C_DAEMON" dagster-daemon liveness-check
JOB_DATE=$(date -u -d "$PARTITION - 7 days" +%F)
in_image forecast-pipeline requests enqueue --as-of "$JOB_DATE"
for _ in $(seq 60); do
    status=$(in_image forecast-pipeline requests list | awk '$1 == 1 {print $2}')
    case "$status" in succeeded) break ;; failed) fail "queued request failed" ;; esac
    sleep 3
done
in_image forecast-pipeline requests list
[ "$status" = succeeded ] || fail "queued request still '$status'"
