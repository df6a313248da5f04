#!/usr/bin/env bash
# usage: scripts/image-smoke.sh IMAGE
# Runs the built image with podman (--runtime runc, --network host, a fresh volume) and checks
# what a container platform relies on: the token refusal off loopback, /healthz and the image's
# HEALTHCHECK on a port set by RUNWATCH_DAEMON__PORT, a non-root uid, a read-only root file
# system, a watch against the simulator (`runwatch sim` in a second container of the same image)
# that completes, SIGTERM (podman stop -t N) exiting 0 within the grace, a restart on the same
# volume resuming an active watch, SIGTERM exiting 0 within the grace while a webhook sink never
# answers (daemon.shutdownTimeoutMs under Docker's 10 s), and a SIGTERM during the start exiting 0.
# Env: SMOKE_GRACE (seconds podman stop waits, default 10, Docker's default). Needs podman and curl.
set -euo pipefail
image=${1:?usage: scripts/image-smoke.sh IMAGE}
grace=${SMOKE_GRACE:-10}
# --log-level fatal: no systemd here for periodic health checks, and podman says so on every run
pm() { podman --runtime runc --log-level fatal "$@"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
step() { printf 'smoke: %s\n' "$*"; }
die() { printf 'smoke: FAILED: %s\n' "$*" >&2; exit 1; }
timings=()
timed() { timings+=("$(printf '%-44s %6s s' "$1" "$2")"); }

id=$$
tmp=$(mktemp -d)
vol=runwatch-smoke-$id
sim=runwatch-smoke-sim-$id
containers=("$sim" "runwatch-smoke-d1-$id" "runwatch-smoke-d2-$id" "runwatch-smoke-d3-$id" "runwatch-smoke-hang-$id" "runwatch-smoke-d4-$id")
cleanup() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    for c in "${containers[@]}"; do
      pm container exists "$c" 2>/dev/null && { echo "--- logs of $c" >&2; pm logs --tail 30 "$c" >&2 || true; }
    done
  fi
  for c in "${containers[@]}"; do pm rm -f -v -t 0 "$c" >/dev/null 2>&1 || true; done
  pm volume rm -f "$vol" "$vol-hang" >/dev/null 2>&1 || true
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT

# free loopback ports (--network host shares the machine's), below the ephemeral range
lowest_ephemeral=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((10000 + RANDOM % (lowest_ephemeral - 10000)))
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  die "no free port"
}
sim_port=$(free_port); port=$(free_port); closed_port=$(free_port); hang_port=$(free_port)
base=http://127.0.0.1:$port
token=smoke-token-$RANDOM$RANDOM

# GET/POST with the token; prints the body, the status code on the last line
call() { curl -s -m 5 -w '\n%{http_code}' -H "authorization: Bearer $token" "$@"; }
status_of() { tail -n 1 <<<"$1"; }
field() { grep -o "\"$2\":\"[^\"]*\"" <<<"$1" | head -n 1 | cut -d'"' -f4; }
running() { [ "$(pm inspect --format '{{.State.Running}}' "$1" 2>/dev/null)" = true ]; }
# waits until container $1 answers /healthz (within $2 s)
wait_healthz() {
  local deadline=$((SECONDS + $2))
  until [ "$(curl -s -m 2 -o /dev/null -w '%{http_code}' "$base/healthz" || true)" = 200 ]; do
    running "$1" || die "$1 exited (code $(exit_code "$1")) before /healthz answered"
    [ "$SECONDS" -lt "$deadline" ] || die "$base/healthz did not answer 200 within $2 s"
    sleep 0.1
  done
}
# waits until watch $1 has state $2 (within $3 s); prints the watch
wait_state() {
  local deadline=$((SECONDS + $3)) body
  while :; do
    body=$(call "$base/v1/watches/$1")
    [ "$(field "$body" state)" = "$2" ] && { sed '$d' <<<"$body"; return; }
    [ "$SECONDS" -lt "$deadline" ] || die "watch $1 is not $2 within $3 s: $body"
    sleep 0.2
  done
}
exit_code() { pm inspect --format '{{.State.ExitCode}}' "$1"; }

mkdir -p "$tmp/secrets"
printf '%s\n' "$token" >"$tmp/secrets/control-token"
chmod 755 "$tmp" "$tmp/secrets" && chmod 644 "$tmp/secrets/control-token"
cat >"$tmp/runs.json" <<'JSON'
[
  { "threadId": "thread_smoke", "runId": "run_quick", "start": "first_request",
    "timeline": [{ "status": "queued", "durationMs": 300 }, { "status": "in_progress", "durationMs": 1200 }, { "status": "completed" }] },
  { "threadId": "thread_smoke", "runId": "run_long", "start": "first_request",
    "timeline": [{ "status": "in_progress", "durationMs": 10000 }, { "status": "completed" }] }
]
JSON
chmod 644 "$tmp/runs.json"
policy='{"jitter":0,"intervals":{"queued":{"baseMs":250,"capMs":250},"in_progress":{"baseMs":250,"capMs":250}}}'
daemon_env=(
  -e "RUNWATCH_DAEMON__PORT=$port"
  -e RUNWATCH_CONTROL_TOKEN_FILE=/run/secrets/runwatch/control-token
  -e RUNWATCH_PROVIDER=openai -e "RUNWATCH_BASE_URL=http://127.0.0.1:$sim_port/v1" -e OPENAI_API_KEY=smoke
  -e "RUNWATCH_WATCH__POLICY=$policy"
)
# daemon_run NAME [VOLUME]: the daemon on $port, its store on VOLUME (default: the smoke's volume)
daemon_run() { pm run -d --name "$1" --network host --read-only -v "${2:-$vol}:/data" -v "$tmp/secrets:/run/secrets/runwatch:ro" "${daemon_env[@]}" "$image" >/dev/null 2>>"$tmp/podman.log"; }
total=$(now)

step "image $image: $(pm image inspect --format '{{.Size}}' "$image" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
pm volume create "$vol" >/dev/null

step "the simulator in a second container on 127.0.0.1:$sim_port"
t=$(now)
pm run -d --name "$sim" --network host -v "$tmp/runs.json:/smoke/runs.json:ro" "$image" \
  node dist/cli.js sim --host 127.0.0.1 --port "$sim_port" --runs /smoke/runs.json --log-level warn >/dev/null 2>>"$tmp/podman.log"
deadline=$((SECONDS + 30))
until pm logs "$sim" 2>/dev/null | grep -q base_url; do
  [ "$SECONDS" -lt "$deadline" ] && running "$sim" || die "the simulator did not start"
  sleep 0.1
done
timed "simulator container up" "$(since "$t")"

step "refuses 0.0.0.0 without a token (exit 64, names RUNWATCH_CONTROL_TOKEN_FILE)"
t=$(now)
set +e
out=$(pm run --rm --network host -e "RUNWATCH_PORT=$port" -e RUNWATCH_PROVIDER=openai \
  -e "RUNWATCH_BASE_URL=http://127.0.0.1:$sim_port/v1" -e OPENAI_API_KEY=smoke "$image" 2>&1)
rc=$?
set -e
[ "$rc" -eq 64 ] || die "expected exit 64 without a token, got $rc: $out"
grep -q 'RUNWATCH_CONTROL_TOKEN_FILE' <<<"$out" || die "the refusal does not mention RUNWATCH_CONTROL_TOKEN_FILE: $out"
grep -q 'bind 127' <<<"$out" && die "the refusal still says to bind 127.0.0.1: $out"
timed "refusal without a token" "$(since "$t")"

step "daemon on port $port (RUNWATCH_DAEMON__PORT), token from a file, read-only root, volume $vol"
d1=${containers[1]}
t=$(now)
daemon_run "$d1"
wait_healthz "$d1" 30
timed "start to /healthz 200" "$(since "$t")"
uid=$(pm exec "$d1" awk '/^Uid:/ { print $2 }' /proc/1/status)
[ "$uid" != 0 ] || die "the daemon runs as root"
step "PID 1 runs as uid $uid"
t=$(now)
pm healthcheck run "$d1" >/dev/null 2>>"$tmp/podman.log" || die "the image's HEALTHCHECK fails on a port set by RUNWATCH_DAEMON__PORT"
timed "HEALTHCHECK (runwatch healthcheck)" "$(since "$t")"
[ "$(status_of "$(call "$base/readyz")")" = 200 ] || die "/readyz is not 200"
[ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' "$base/v1/watches")" = 401 ] || die "/v1/watches answers without the token"

step "a watch against the simulator completes"
t=$(now)
quick=$(call -H 'content-type: application/json' -d '{"thread_id":"thread_smoke","run_id":"run_quick"}' "$base/v1/watches")
[ "$(status_of "$quick")" = 201 ] || die "POST /v1/watches: $quick"
quick_id=$(field "$quick" id)
done_quick=$(wait_state "$quick_id" finished 30)
[ "$(field "$done_quick" status)" = completed ] || die "run_quick did not complete: $done_quick"
timed "watch created to finished (run lasts 1.5 s)" "$(since "$t")"

long=$(call -H 'content-type: application/json' -d '{"thread_id":"thread_smoke","run_id":"run_long"}' "$base/v1/watches")
[ "$(status_of "$long")" = 201 ] || die "POST /v1/watches: $long"
long_id=$(field "$long" id)
wait_state "$long_id" active 10 >/dev/null
# let it poll at least once, so that the restart has progress to resume from
sleep 1
[ "$(field "$(call "$base/v1/watches/$long_id")" status)" = in_progress ] || die "run_long is not in_progress"

step "SIGTERM (podman stop -t $grace) exits 0 within the grace"
t=$(now)
pm stop -t "$grace" "$d1" >/dev/null
stop_s=$(since "$t")
rc=$(exit_code "$d1")
[ "$rc" = 0 ] || die "exit code $rc after SIGTERM (137: SIGKILLed at the end of the grace)"
awk -v s="$stop_s" -v g="$grace" 'BEGIN { exit !(s < g) }' || die "stopping took $stop_s s, not under the $grace s grace"
pm logs "$d1" 2>&1 | grep -q '"msg":"stopped"' || die "no graceful stop in the log"
timed "podman stop (SIGTERM to exit 0)" "$stop_s"

step "a restart on the same volume resumes the active watch"
d2=${containers[2]}
t=$(now)
daemon_run "$d2"
wait_healthz "$d2" 30
timed "restart to /healthz 200" "$(since "$t")"
pm logs "$d2" 2>&1 | grep -q '"resumed":1' || die "the restart did not resume one watch: $(pm logs "$d2" 2>&1 | tail -n 5)"
done_long=$(wait_state "$long_id" finished 40)
[ "$(field "$done_long" status)" = completed ] || die "run_long did not complete after the restart: $done_long"
timed "restart to the resumed watch finished" "$(since "$t")"
pm stop -t "$grace" "$d2" >/dev/null
[ "$(exit_code "$d2")" = 0 ] || die "the second daemon did not exit 0"

step "SIGTERM with a webhook sink that never answers exits 0 within the grace"
hang=${containers[4]} d4=${containers[5]}
pm run -d --name "$hang" --network host "$image" \
  node -e "require('node:net').createServer(() => {}).listen($hang_port, '127.0.0.1')" >/dev/null 2>>"$tmp/podman.log"
daemon_env+=(-e "RUNWATCH_WEBHOOK_URL=http://127.0.0.1:$hang_port/hook")
pm volume create "$vol-hang" >/dev/null
daemon_run "$d4" "$vol-hang"
wait_healthz "$d4" 30
# run_quick has completed: its first poll records run.completed, whose delivery then hangs
hung=$(call -H 'content-type: application/json' -d '{"thread_id":"thread_smoke","run_id":"run_quick"}' "$base/v1/watches")
[ "$(status_of "$hung")" = 201 ] || die "POST /v1/watches: $hung"
wait_state "$(field "$hung" id)" finished 30 >/dev/null
t=$(now)
pm stop -t "$grace" "$d4" >/dev/null
hang_s=$(since "$t")
rc=$(exit_code "$d4")
[ "$rc" = 0 ] || die "exit code $rc after SIGTERM with a hanging sink (137: SIGKILLed; 70: over shutdownTimeoutMs)"
awk -v s="$hang_s" -v g="$grace" 'BEGIN { exit !(s < g) }' || die "stopping with a hanging sink took $hang_s s, not under the $grace s grace"
timed "podman stop, a webhook sink hanging" "$hang_s"
daemon_env=("${daemon_env[@]:0:${#daemon_env[@]}-2}")

step "SIGTERM during the start (waiting for an absent Redis) exits 0"
d3=${containers[3]}
daemon_env+=(-e RUNWATCH_STORE=redis -e "RUNWATCH_REDIS_URL=redis://127.0.0.1:$closed_port")
daemon_run "$d3"
sleep 1
pm exec "$d3" true 2>/dev/null || die "the daemon ended before the signal: $(pm logs "$d3" 2>&1 | tail -n 3)"
t=$(now)
pm stop -t "$grace" "$d3" >/dev/null
early_s=$(since "$t")
rc=$(exit_code "$d3")
[ "$rc" = 0 ] || die "exit code $rc after a SIGTERM during the start"
pm logs "$d3" 2>&1 | grep -q 'stopped during the start' || die "no 'stopped during the start' in the log"
awk -v s="$early_s" 'BEGIN { exit !(s < 3) }' || die "stopping during the start took $early_s s"
timed "podman stop during the start" "$early_s"

timed "whole smoke run" "$(since "$total")"
step "passed"
printf '  %s\n' "${timings[@]}"
