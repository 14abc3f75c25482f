#!/usr/bin/env bash
# The watchlist demo, from one command: starts a local Kafka broker, creates
# the tutorial's topics (watchlist compacted), produces fake users, runs the
# team-1 watchlist, kills it with SIGKILL mid-run and restarts it (it restores
# its counts from the watchlist topic), then prints the final watchlist and
# checks it against a recount of new_users.
#
#   apps/demo.sh [USERS]     (default 20000)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
users="${1:-20000}"
work="$repo/target/demo"
bin="$repo/target/release"

echo "== building the programs (release)"
cargo build --release --quiet -p apps --bins
echo "== starting the local Kafka broker"
bootstrap=$(tests/broker/kafka.sh start | tail -n 1)
echo "== creating topics new_users (2 partitions) and watchlist (2 partitions, compacted)"
tests/broker/kafka.sh topic new_users 2
tests/broker/kafka.sh topic watchlist 2 cleanup.policy=compact
tests/broker/kafka.sh topic actions 2
rm -rf "$work" && mkdir -p "$work"
common=(--team team-1 --bootstrap-servers "$bootstrap")
app_id="team-1-demo-$(date +%s)"

echo "== producing $users fake users at 4000/s, running the team-1 watchlist"
"$bin/fake-users" "${common[@]}" --count "$users" --rate 4000 >"$work/fake-users.log" 2>&1 &
feeder=$!
"$bin/watchlist" "${common[@]}" --application-id "$app_id" --state-dir "$work/state" >>"$work/watchlist.log" 2>&1 &
app=$!
sleep 3
echo "== SIGKILL the watchlist mid-run (pid $app), then restart it"
kill -9 "$app" 2>/dev/null || true
wait "$app" 2>/dev/null || true
"$bin/watchlist" "${common[@]}" --application-id "$app_id" --state-dir "$work/state" >>"$work/watchlist.log" 2>&1 &
app=$!
trap 'kill "$app" 2>/dev/null || true' EXIT
wait "$feeder"
echo "== waiting for the watchlist to catch up"
"$bin/watchlist-report" "${common[@]}" --wait-secs 120 | tee "$work/report.txt"
kill "$app" 2>/dev/null || true
wait "$app" 2>/dev/null || true
echo "== $(grep -c 'ALERT' "$work/watchlist.log") ALERT lines in $work/watchlist.log; the broker keeps running (tests/broker/kafka.sh stop)"
