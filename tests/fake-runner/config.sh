#!/bin/bash
# Fake actions/runner config.sh. Copies the real script's observable
# behaviour (actions/runner src/Misc/layoutroot/config.sh and
# Runner.Listener's configure/remove):
# - refuses root unless RUNNER_ALLOW_RUNASROOT is set ("Must not run with
#   sudo", exit 1);
# - reads arguments from flags or ACTIONS_RUNNER_INPUT_<NAME> variables;
# - refuses a second configure while .runner exists (exit 1, same message);
# - writes .runner / .credentials / .credentials_rsaparams;
# - `remove` needs a token (unattended) unless --local, and with config
#   files missing only prints the "Skipping removing runner" message.
# Every call is appended to $FAKE_RUNNER_LOG for the tests to inspect.
# Faults the tests steer (below): GitHub slow (FAKE_GITHUB_LATENCY) or
# refusing registrations (config.fail).
set -u
cd "$(dirname "$0")" || exit 1
log() { [ -n "${FAKE_RUNNER_LOG:-}" ] && echo "$(date +%s.%N) $*" >> "$FAKE_RUNNER_LOG"; return 0; }
user_id=$(id -u)
if [ "$user_id" -eq 0 ] && [ -z "${RUNNER_ALLOW_RUNASROOT:-}" ]; then
    echo "Must not run with sudo"
    exit 1
fi
for arg in "$@"; do
    if [ "$arg" = "--token" ]; then log "TOKEN_ON_ARGV"; fi
done
token="${ACTIONS_RUNNER_INPUT_TOKEN:-}"
url="${ACTIONS_RUNNER_INPUT_URL:-}"
name="${ACTIONS_RUNNER_INPUT_NAME:-}"
labels="${ACTIONS_RUNNER_INPUT_LABELS:-}"
unattended=false
local_only=false
remove=false
if [ "${1:-}" = "remove" ]; then remove=true; shift; fi
while [ $# -gt 0 ]; do
    case "$1" in
        --url) url="$2"; shift 2 ;;
        --name) name="$2"; shift 2 ;;
        --labels) labels="$2"; shift 2 ;;
        --token) token="$2"; shift 2 ;;
        --unattended) unattended=true; shift ;;
        --local) local_only=true; shift ;;
        --no-default-labels|--disableupdate|--replace|--ephemeral) shift ;;
        *) echo "Unrecognized command-line input arguments: '$1'"; exit 1 ;;
    esac
done
unset ACTIONS_RUNNER_INPUT_TOKEN
start=$(date +%s.%N)
if $remove; then
    if $local_only; then
        rm -f .runner .credentials .credentials_rsaparams
        log "REMOVE_LOCAL"
        exit 0
    fi
    if [ ! -f .runner ] || [ ! -f .credentials ]; then
        echo "Cannot connect to server, because config files are missing. Skipping removing runner from the server."
        rm -f .credentials .credentials_rsaparams
        exit 0
    fi
    if [ -z "$token" ]; then
        echo "Invalid configuration provided for token. Terminating unattended configuration."
        exit 1
    fi
    sleep "${FAKE_GITHUB_LATENCY:-0}"
    agent_name=$(sed -n 's/.*"agentName": *"\([^"]*\)".*/\1/p' .runner)
    rm -f .runner .credentials .credentials_rsaparams
    log "REMOVE name=$agent_name start=$start"
    echo "Runner removal: SUCCESS"
    exit 0
fi
if [ -f .runner ]; then
    echo "Cannot configure the runner because it is already configured. To reconfigure the runner, run 'config.cmd remove' or './config.sh remove' first."
    log "CONFIGURE_REFUSED name=$name"
    exit 1
fi
if [ -z "$token" ] || [ -z "$url" ]; then
    echo "Invalid configuration provided for token. Terminating unattended configuration."
    exit 1
fi
# Registration talks to GitHub; the tests can make that take time.
sleep "${FAKE_GITHUB_LATENCY:-0}"
# GitHub answering the registration with an error: $FAKE_JOBS_DIR/config.fail
# holds how many registrations fail (one used per call). The real
# Runner.Listener configure prints the HTTP error (as for a token GitHub no
# longer accepts) and Program.cs returns TerminatedError (1), writing
# nothing.
fail_file="${FAKE_JOBS_DIR:-/nonexistent}/config.fail"
if [ -f "$fail_file" ]; then
    left=$(cat "$fail_file")
    if [ "${left:-0}" -gt 0 ]; then
        echo $((left - 1)) > "$fail_file"
        echo "Http response code: NotFound from 'POST https://api.github.com/actions/runner-registration'"
        log "CONFIGURE_FAILED name=$name"
        exit 1
    fi
fi
printf '{\n  "agentId": %d,\n  "agentName": "%s",\n  "poolId": 1,\n  "serverUrl": "%s",\n  "gitHubUrl": "%s",\n  "workFolder": "_work",\n  "labels": "%s"\n}\n' "$RANDOM" "$name" "$url" "$url" "$labels" > .runner
echo '{"scheme": "OAuth"}' > .credentials
echo '{}' > .credentials_rsaparams
end=$(date +%s.%N)
log "CONFIGURE name=$name labels=$labels url=$url unattended=$unattended start=$start end=$end"
echo "√ Runner successfully added"
echo "√ Settings Saved."
exit 0
