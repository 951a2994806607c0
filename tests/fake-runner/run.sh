#!/bin/bash
# Fake actions/runner run.sh (+ run-helper.sh): root check ("Must not run
# interactively with sudo", exit 1), runs bin/Runner.Listener run; with
# RUNNER_MANUALLY_TRAP_SIG, INT/TERM are forwarded to the listener as INT
# and the listener's exit code is returned; exit code 2 restarts it.
set -u
cd "$(dirname "$0")" || exit 1
user_id=$(id -u)
if [ "$user_id" -eq 0 ] && [ -z "${RUNNER_ALLOW_RUNASROOT:-}" ]; then
    echo "Must not run interactively with sudo"
    exit 1
fi
while :; do
    bin/Runner.Listener run "$@" &
    PID=$!
    trap 'kill -INT $PID 2>/dev/null' INT TERM
    wait $PID
    rc=$?
    # `wait` returns early when a trapped signal arrives; wait for the end.
    while kill -0 $PID 2>/dev/null; do wait $PID; rc=$?; done
    if [ $rc -eq 2 ]; then sleep 1; continue; fi
    if [ -n "${RUNNER_MANUALLY_TRAP_SIG:-}" ]; then exit $rc; fi
    exit 0
done
