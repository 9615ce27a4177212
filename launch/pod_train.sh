#!/usr/bin/env bash
# unimodal-train inside a GKE pod (launch/Dockerfile; the command unimodal-launch-xpk submits). SIGTERM is passed on
# to the trainer, which then saves at the next step boundary and exits 0 ("Preempted: saved step N"); this wrapper
# turns that clean stop into exit status 42, the status on which an xpk workload restarts (--max-restarts), so that
# the restarted JobSet resumes from the checkpoint instead of ending as if training had finished. Any other exit
# status is the trainer's own.
set -u
log=$(mktemp)
unimodal-train "$@" > "$log" 2>&1 &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null' TERM
tail -n +1 -f --pid="$pid" "$log" &
wait "$pid"
code=$?
while kill -0 "$pid" 2>/dev/null; do  # a trapped SIGTERM ends `wait` early: wait for the trainer itself
  wait "$pid"
  code=$?
done
wait  # tail prints the last lines
if [ "$code" -eq 0 ] && grep -q '^Preempted: saved step' "$log"; then
  exit 42
fi
exit "$code"
