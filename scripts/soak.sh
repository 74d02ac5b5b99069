#!/usr/bin/env bash
# Soak test: N requests through a dispatcher that is SIGKILLed KILLS times and whose git daemon is
# stopped and restarted several times; then the invariants on a fresh clone of the remote.
#
#   scripts/soak.sh [N] [KILLS]        defaults: 1000 requests, 30 kills
#
# It builds the debug binary if needed, creates a temporary world (a bare remote served by `git daemon
# --enable=receive-pack` on 127.0.0.1, a submitter clone with two kinds: `ok`, which sleeps 0-50 ms, and
# `flaky`, idempotent with 2 retries, which fails attempt 1 for ids ending in an even digit), submits the
# requests in batches (most while the dispatcher runs), runs the dispatcher in loop mode and SIGKILLs and
# restarts it at random moments, restarts the git daemon in between, finishes with `run --until-empty`,
# and checks on a fresh clone:
#   lost        submitted requests with no status
#   duplicated  requests with more than one status or more than one outcome commit (Dispatch-Id)
#   left        files still in requests/
#   unpushed    commits on the dispatcher's branch (WORK/repo.git refs/heads/main) not on the remote
# It prints one line of figures and exits 1 if any of those is non-zero (or the final run failed).
#
# Environment: SOAK_SEED (the $RANDOM seed, printed, to replay a run), SOAK_KEEP=1 (keep the temp dir),
# SOAK_DEADLINE (seconds for the whole soak before it gives up; default 600 + N).
# Everything is bounded (loops have counts and deadlines), listens on 127.0.0.1 only, and the exit trap
# kills its background processes and removes its temp dir.

set -euo pipefail

N=${1:-1000}
KILLS=${2:-30}
if ! [[ $N =~ ^[0-9]+$ && $KILLS =~ ^[0-9]+$ && $N -ge 1 ]]; then
    echo "usage: $0 [N>=1] [KILLS>=0]" >&2
    exit 2
fi
SEED=${SOAK_SEED:-$(( $(date +%s) % 32768 ))}
RANDOM=$SEED
DEADLINE_SECS=${SOAK_DEADLINE:-$(( 600 + N ))}
STARTED=$SECONDS

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf 'soak: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 2; }
past_deadline() { (( SECONDS - STARTED > DEADLINE_SECS )); }

command -v git >/dev/null || die "git is required"
command -v python3 >/dev/null || die "python3 is required (free port, JSON checks)"

# --- build ----------------------------------------------------------------------------------------
(cd "$ROOT" && cargo build --quiet) || die "cargo build failed"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/git-dispatch
[[ -x $BIN ]] || die "no binary at $BIN"
GIT_DAEMON=$(git --exec-path)/git-daemon
[[ -x $GIT_DAEMON ]] || die "no git-daemon at $GIT_DAEMON"

# --- the world ------------------------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/git-dispatch-soak.XXXXXX")
# Handlers may run as an unprivileged user: the world must be traversable.
chmod 755 "$TMP"
REMOTE=$TMP/remote.git
SUBMIT=$TMP/submit
WORK=$TMP/work
LOCKS=$TMP/locks
mkdir -p "$TMP/home" "$LOCKS"
chmod 755 "$LOCKS"

DISPATCHER_PID=
DAEMON_PID=
SUBMITTER_PID=

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "$DISPATCHER_PID" "$SUBMITTER_PID" "$DAEMON_PID"; do
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [[ ${SOAK_KEEP:-} == 1 ]]; then
        say "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A hermetic Git: no user or system config, a private HOME, fixed identities.
export HOME=$TMP/home LC_ALL=C TZ=UTC
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_SYSTEM=/dev/null GIT_CONFIG_NOSYSTEM=1 GIT_TERMINAL_PROMPT=0
export GIT_AUTHOR_NAME="Soak Submitter" GIT_AUTHOR_EMAIL=soak@example.test
export GIT_COMMITTER_NAME="Soak Submitter" GIT_COMMITTER_EMAIL=soak@example.test
unset GIT_DIR GIT_WORK_TREE GIT_DISPATCH_FAILPOINT

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=git://127.0.0.1:$PORT/remote.git

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

DAEMON_STARTS=0
start_daemon() {
    local try
    for try in $(seq 1 50); do
        # The git-daemon program itself, not the `git daemon` wrapper: killing it closes the port.
        "$GIT_DAEMON" --reuseaddr --export-all --enable=receive-pack --informative-errors \
            --base-path="$TMP" --listen=127.0.0.1 --port="$PORT" \
            </dev/null >>"$TMP/daemon.log" 2>&1 &
        DAEMON_PID=$!
        local i
        for i in $(seq 1 100); do
            if port_open; then
                DAEMON_STARTS=$((DAEMON_STARTS + 1))
                return 0
            fi
            kill -0 "$DAEMON_PID" 2>/dev/null || break
            sleep 0.05
        done
        kill -KILL "$DAEMON_PID" 2>/dev/null || true
        wait "$DAEMON_PID" 2>/dev/null || true
        DAEMON_PID=
        sleep 0.2
    done
    die "git daemon does not listen on 127.0.0.1:$PORT (see $TMP/daemon.log)"
}

stop_daemon() {
    [[ -n $DAEMON_PID ]] || return 0
    kill -KILL "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
    DAEMON_PID=
}

git init -q --bare -b main "$REMOTE"
git init -q -b main "$SUBMIT"
cd "$SUBMIT"
git remote add origin "$REMOTE"
mkdir -p handlers schemas requests processed logs
: >requests/.gitkeep
: >processed/.gitkeep
: >logs/.gitkeep
cat >schemas/request.schema.json <<'JSON'
{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["kind"],
  "additionalProperties": false,
  "properties": {
    "kind": { "type": "string", "minLength": 1 },
    "id": { "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$" },
    "resource": { "type": "string", "minLength": 1 },
    "params": { "type": "object" },
    "timeout": { "type": "string" }
  }
}
JSON
cat >handlers/index.yml <<'YAML'
ok:
  handler: ok.sh
  timeout: 30s
  grace: 1s
flaky:
  handler: flaky.sh
  timeout: 30s
  grace: 1s
  idempotent: true
  retries: 2
  retry_backoff: 50ms
YAML
cat >handlers/ok.sh <<'SH'
#!/bin/sh
# Sleeps a random 0-50 ms, succeeds.
ms=$(( $(od -An -N2 -tu2 /dev/urandom) % 51 ))
sleep "$(printf '0.%03d' "$ms")"
echo "ok: $DISPATCH_ID attempt $DISPATCH_ATTEMPT slept ${ms}ms"
SH
cat >handlers/flaky.sh <<'SH'
#!/bin/sh
# Fails attempt 1 for ids ending in an even digit.
echo "flaky: $DISPATCH_ID attempt $DISPATCH_ATTEMPT"
case "$DISPATCH_ID" in
*[02468])
    if [ "$DISPATCH_ATTEMPT" = 1 ]; then
        echo "flaky: failing attempt 1" >&2
        exit 1
    fi
    ;;
esac
exit 0
SH
chmod 755 handlers/ok.sh handlers/flaky.sh
git add -A
git commit -q -m "seed the inbox"
git push -q -u origin main

# --- submitting -----------------------------------------------------------------------------------
: >"$TMP/submitted.txt"
submit_batch() { # FIRST COUNT: requests soak-FIRST .. soak-(FIRST+COUNT-1), one commit, one push
    local first=$1 count=$2 i name kind try
    for ((i = first; i < first + count; i++)); do
        printf -v name 'soak-%05d.yml' "$i"
        if ((i % 3 == 0)); then kind=flaky; else kind=ok; fi
        printf 'kind: %s\nparams:\n  n: %d\n' "$kind" "$i" >"requests/$name"
        echo "$name" >>"$TMP/submitted.txt"
    done
    git add requests
    git commit -q -m "soak: requests $first..$((first + count - 1))"
    # The dispatcher pushes too: on a non-fast-forward, rebase onto its outcomes and push again.
    for try in $(seq 1 60); do
        if git push -q origin HEAD:main 2>>"$TMP/submit.log"; then
            return 0
        fi
        git pull -q --rebase origin main 2>>"$TMP/submit.log" || git rebase --abort 2>/dev/null || true
        sleep 0.$((RANDOM % 5))
    done
    say "error: could not push requests $first.. after 60 tries (see submit.log)"
    return 1
}

BATCH=$(( N / 20 ))
((BATCH >= 5)) || BATCH=5
# The first batch goes in before the dispatcher starts; the rest while it runs and is killed.
FIRST_COUNT=$(( N < BATCH ? N : BATCH ))
submit_batch 1 "$FIRST_COUNT"

submit_the_rest() {
    local next=$((FIRST_COUNT + 1)) count
    while ((next <= N)); do
        count=$(( BATCH / 2 + RANDOM % (BATCH + 1) ))
        ((count >= 1)) || count=1
        ((next + count - 1 <= N)) || count=$((N - next + 1))
        submit_batch "$next" "$count" || return 1
        next=$((next + count))
        sleep 0.$((RANDOM % 10))
    done
}

# --- the dispatcher -------------------------------------------------------------------------------
# Started directly (not through a shell function, whose `$!` would be a subshell), so `kill` reaches it.
DISPATCH_ARGS=(run --remote "$URL" --workdir "$WORK" --lock-dir "$LOCKS" --dispatcher-id soak)

UNEXPECTED_EXITS=0
start_dispatcher() {
    "$BIN" "${DISPATCH_ARGS[@]}" --poll-interval 200ms </dev/null >>"$TMP/dispatcher.log" 2>&1 &
    DISPATCHER_PID=$!
}

# SIGKILLs the dispatcher if it is running; counts an exit it made on its own (a loop never exits).
kill_dispatcher() {
    [[ -n $DISPATCHER_PID ]] || return 0
    local status=0
    if kill -0 "$DISPATCHER_PID" 2>/dev/null; then
        kill -KILL "$DISPATCHER_PID" 2>/dev/null || true
        wait "$DISPATCHER_PID" 2>/dev/null || status=$?
        if ((status != 137)); then
            UNEXPECTED_EXITS=$((UNEXPECTED_EXITS + 1))
            say "the dispatcher exited with $status before it was killed"
        fi
    else
        wait "$DISPATCHER_PID" 2>/dev/null || status=$?
        UNEXPECTED_EXITS=$((UNEXPECTED_EXITS + 1))
        say "the dispatcher exited on its own with $status"
    fi
    DISPATCHER_PID=
    return 0
}

start_daemon
start_dispatcher
submit_the_rest >>"$TMP/submit.log" 2>&1 &
SUBMITTER_PID=$!

# Daemon restarts: every RESTART_EVERY-th kill, the git daemon goes down for up to a second while the
# dispatcher runs (a fetch or push may be in flight), then comes back on the same port.
RESTART_EVERY=$(( KILLS / 4 ))
((RESTART_EVERY >= 2)) || RESTART_EVERY=2
DAEMON_RESTARTS=0
KILLED=0
for ((k = 1; k <= KILLS; k++)); do
    past_deadline && { say "deadline reached during the kills"; break; }
    sleep "$((RANDOM % 2)).$((RANDOM % 10))"
    if ((k % RESTART_EVERY == 0)); then
        stop_daemon
        sleep "0.$((RANDOM % 10))"
        start_daemon
        DAEMON_RESTARTS=$((DAEMON_RESTARTS + 1))
        sleep "0.$((RANDOM % 10))"
    fi
    kill_dispatcher
    KILLED=$((KILLED + 1))
    start_dispatcher
done

# Let the submitter finish (bounded), keep the dispatcher running meanwhile, then stop it for good.
while kill -0 "$SUBMITTER_PID" 2>/dev/null; do
    past_deadline && { say "deadline reached while submitting"; break; }
    sleep 0.2
done
SUBMIT_STATUS=0
if kill -0 "$SUBMITTER_PID" 2>/dev/null; then
    kill -KILL "$SUBMITTER_PID" 2>/dev/null || true
    SUBMIT_STATUS=1
fi
wait "$SUBMITTER_PID" 2>/dev/null || SUBMIT_STATUS=$?
SUBMITTER_PID=
((SUBMIT_STATUS == 0)) || say "the submitter failed ($SUBMIT_STATUS); see the figures for what was submitted"
kill_dispatcher

# --- finish ---------------------------------------------------------------------------------------
LEFT_SECS=$(( DEADLINE_SECS - (SECONDS - STARTED) ))
((LEFT_SECS >= 60)) || LEFT_SECS=60
FINAL_STATUS=0
timeout --signal=KILL "$LEFT_SECS" "$BIN" "${DISPATCH_ARGS[@]}" --until-empty \
    </dev/null >>"$TMP/final.log" 2>&1 || FINAL_STATUS=$?
((FINAL_STATUS == 0)) || say "the final run --until-empty exited $FINAL_STATUS"

# --- invariants -----------------------------------------------------------------------------------
CLONE=$TMP/check
git clone -q "$REMOTE" "$CLONE"
git -C "$CLONE" log --format='%(trailers:key=Dispatch-Id,valueonly,separator=)' >"$TMP/trailers.txt"
git --git-dir "$REMOTE" rev-list refs/heads/main | sort >"$TMP/remote-commits.txt"
git --git-dir "$WORK/repo.git" rev-list refs/heads/main | sort >"$TMP/local-commits.txt"
UNPUSHED=$(comm -23 "$TMP/local-commits.txt" "$TMP/remote-commits.txt" | wc -l)

read -r SUBMITTED LOST DUPLICATED LEFT ABANDONED SUCCEEDED OTHERS < <(
    python3 - "$CLONE" "$TMP/submitted.txt" "$TMP/trailers.txt" <<'PY'
import collections, json, os, sys

clone, submitted_path, trailers_path = sys.argv[1:4]
submitted = [line.strip() for line in open(submitted_path) if line.strip()]
by_request = collections.defaultdict(list)
states = collections.Counter()
# Status files sit in shard folders (processed/a/b/c/ID.status.json): walk the whole tree.
for folder, _, names in os.walk(os.path.join(clone, "processed")):
    for name in names:
        if name.endswith(".status.json"):
            with open(os.path.join(folder, name)) as f:
                status = json.load(f)
            by_request[status.get("request")].append(status)
            states[status.get("state")] += 1
ids = collections.Counter(line.strip() for line in open(trailers_path) if line.strip())

def stem(key):
    return key.split("~", 1)[0]

lost = [f for f in submitted if not by_request.get("requests/" + f)]
twice = {stem(f[: -len(".yml")]) for f in submitted if len(by_request.get("requests/" + f, [])) > 1}
twice |= {stem(key) for key, count in ids.items() if count > 1}
stray = [r for r in by_request if r is None or r[len("requests/"):] not in set(submitted)]
left = [n for n in os.listdir(os.path.join(clone, "requests")) if not n.startswith(".")]
for f in lost[:10]:
    print(f"soak: lost: requests/{f}", file=sys.stderr)
for key in sorted(twice)[:10]:
    print(f"soak: duplicated: {key}", file=sys.stderr)
for r in stray[:10]:
    print(f"soak: a status for a request nobody submitted: {r}", file=sys.stderr)
others = ",".join(f"{count}-{state}" for state, count in sorted(states.items())
                  if state not in ("succeeded", "abandoned")) or "-"
print(len(submitted), len(lost), len(twice) + len(stray), len(left),
      states["abandoned"], states["succeeded"], others)
PY
)

ELAPSED=$(( SECONDS - STARTED ))
OTHER_NOTE=
[[ $OTHERS == - ]] || OTHER_NOTE=", other states: ${OTHERS//,/ }"
EXIT_NOTE=
((UNEXPECTED_EXITS == 0)) || EXIT_NOTE=", $UNEXPECTED_EXITS unexpected dispatcher exits"
printf 'soak: %d requests, %d kills, %d daemon restarts, %d lost, %d duplicated, %d left in inbox, %d unpushed, %d abandoned, %d succeeded%s%s, %d s (seed %d)\n' \
    "$SUBMITTED" "$KILLED" "$DAEMON_RESTARTS" "$LOST" "$DUPLICATED" "$LEFT" "$UNPUSHED" \
    "$ABANDONED" "$SUCCEEDED" "$OTHER_NOTE" "$EXIT_NOTE" "$ELAPSED" "$SEED"

FAILED=0
((LOST + DUPLICATED + LEFT + UNPUSHED == 0)) || FAILED=1
((FINAL_STATUS == 0)) || FAILED=1
((SUBMITTED == N)) || { say "only $SUBMITTED of $N requests were submitted"; FAILED=1; }
if ((FAILED)); then
    say "FAILED; the last lines of the dispatcher's logs:"
    tail -n 20 "$TMP/dispatcher.log" >&2 || true
    tail -n 20 "$TMP/final.log" >&2 || true
    exit 1
fi
exit 0
