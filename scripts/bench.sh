#!/usr/bin/env bash
# Benchmark: git-dispatch against the baseline "starter" dispatcher, side by side, on this machine.
#
#   scripts/bench.sh [--quick]
#
# It builds the release binary, builds the worlds (bare remotes with queued requests, made by the
# baseline's own `mkworld.sh`), runs the starter and git-dispatch in the same run, and prints one
# labelled line per figure, plus the machine. It is a benchmark, not a test: it asserts nothing about
# timing, it prints the measured value, the ratio and, in brackets, the issue's target. It exits
# non-zero only when something broke (a run failed, requests were lost or left in the inbox). Each
# timed run starts after a `sync`, so that no program pays for the writes of the one before.
#
# Figures:
#   1  throughput draining N queued trivial `echo` requests: the starter, and git-dispatch --jobs 1
#      with its defaults
#   2  the same handler run N times from a plain shell loop, and git-dispatch's time over that
#   3  concurrency: 8 `sleep 1` requests on resources r1..r8 with --jobs 8 and --jobs 1
#   4  idle loop mode (--poll-interval 1s): CPU % of one core and RSS, local path and git daemon
#   5  peak RSS while draining the N requests of figure 1 (VmRSS sampled every 50 ms)
#   6  pickup latency, push end -> handler start: git daemon (poll 1s), git daemon with a push
#      webhook sent after each push, and local path (inotify)
#   7  ms/request draining SCALE_N requests over 0 and HISTORY recorded outcomes (one commit of
#      processed/S/ID.yml, processed/S/ID.status.json and logs/S/ID.log made with git fast-import),
#      on a workdir that already cloned the history, with the dispatcher's peak RSS; SCALE_ROUNDS
#      rounds alternate between the two, and the ratio is of the medians
#   8  scale-out: FLEET_N requests of a 200 ms handler on FLEET_RES resources drained by 1, 2 and 4
#      dispatchers (--jobs 2 each) on one git daemon remote, and the throughput ratios 4/1 and 2/1
#   9  the cost of claims: one dispatcher draining N trivial requests over git daemon, its time over
#      the handler alone from a shell loop, and the overhead per request
#   (8 and 9 are in scripts/bench-fleet.sh, sourced here)
#
# --only=7 (or --only=1,2,6 ...) measures those figures alone.
# Sizes (default / --quick): N 1000/100, idle 60/10 s, HISTORY 100000/10000, SCALE_N 200/100,
# SCALE_ROUNDS 7/2, FLEET_N 400/80 on FLEET_RES 40/16 resources.
# The default takes 10-14 minutes on 2 cores (the starter's 1000 requests 3-4 minutes, figure
# 7 at 100,000 and the two 60 s idles most of the rest), --quick about 1.5 minutes (plus the release
# build when it is not up to date).
#
# The baseline scripts (mkworld.sh, seed-starter.sh) are taken from $BENCH_SHARED (default
# /work/shared/bench) when it exists, else from the verbatim copies in scripts/bench-lib/.
# The starter needs `yq` (the Python yq: `yq -r`); without it its figures are skipped.
# Environment: BENCH_KEEP=1 keeps the temporary directory; BENCH_CGROUP=v1|v2|none chooses the
# cgroup hierarchy of the runs (GIT_DISPATCH_CGROUP). Everything runs on local paths and
# 127.0.0.1; loops are bounded; the exit trap stops what it started and removes its temp dir.

set -euo pipefail

QUICK=0
ONLY=
for arg in "$@"; do
    case $arg in
    --quick) QUICK=1 ;;
    --only=*) ONLY=,${arg#--only=}, ;;
    -h | --help)
        sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "usage: $0 [--quick] [--only=1,2,...]" >&2
        exit 2
        ;;
    esac
done

# want N: whether figure N is measured (all of them without --only; figure 2 needs figure 1's drain).
want() { [[ -z $ONLY || $ONLY == *,$1,* || ($1 == 1 && $ONLY == *,2,*) ]]; }

if ((QUICK)); then
    N=100 IDLE_SECS=10 HISTORY=10000 SCALE_N=100 SCALE_ROUNDS=2 LAT_RUNS=9 FLEET_N=80 FLEET_RES=16
else
    N=1000 IDLE_SECS=60 HISTORY=100000 SCALE_N=200 SCALE_ROUNDS=7 LAT_RUNS=5 FLEET_N=400 FLEET_RES=40
fi
# The starter drains the same N requests (the issue compares both "draining 1,000 queued trivial
# requests ... on the same world"): its time per request grows with the world (each `git` call
# reads an index of all of it), 6.6 req/s on 1000 against 7.4 on 100 requests, measured one after
# the other on the benchmark machine.
N_S=$N
POLL=1s

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LIB=$ROOT/scripts/bench-lib
SHARED=${BENCH_SHARED:-/work/shared/bench}
[[ -x $SHARED/mkworld.sh && -x $SHARED/seed-starter.sh ]] || SHARED=$LIB
MKWORLD=$SHARED/mkworld.sh
STARTER=$SHARED/seed-starter.sh
[[ -x $MKWORLD && -x $STARTER ]] || { echo "bench: error: no mkworld.sh/seed-starter.sh in $SHARED" >&2; exit 1; }

say() { printf 'bench: %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}
# One result line, on standard output.
out() { printf '%s\n' "$*"; }
now() { date +%s.%N; }
# Floating-point arithmetic: calc FORMAT EXPRESSION
calc() { awk "BEGIN { printf \"$1\", $2 }"; }

STARTED=$SECONDS
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
command -v git >/dev/null || die "git is required"
command -v cargo >/dev/null || die "cargo is required"
command -v awk >/dev/null || die "awk is required"
command -v timeout >/dev/null || die "timeout (coreutils) is required"
GIT_DAEMON=$(git --exec-path)/git-daemon
[[ -x $GIT_DAEMON ]] || die "no git-daemon at $GIT_DAEMON"
TICKS=$(getconf CLK_TCK)

# --- build ----------------------------------------------------------------------------------------
say "building the release binary"
(cd "$ROOT" && cargo build --release --quiet) || die "cargo build --release failed"
BUILD_SECS=$((SECONDS - STARTED))
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/git-dispatch
[[ -x $BIN ]] || die "no binary at $BIN"

# --- temp dir, cleanup ----------------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/git-dispatch-bench.XXXXXX")
# Started as root, the dispatcher runs handlers as `nobody`: the worlds must be traversable.
chmod 755 "$TMP"
mkdir -p "$TMP/home"

BG_PIDS=()
cleanup() {
    local status=$? pid
    trap - EXIT INT TERM
    for pid in "${BG_PIDS[@]}"; do
        if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [[ ${BENCH_KEEP:-} == 1 ]]; then
        say "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Forget a background pid once it is waited for.
forget() {
    local pid=$1 i
    for i in "${!BG_PIDS[@]}"; do
        [[ ${BG_PIDS[$i]} == "$pid" ]] && unset 'BG_PIDS[i]'
    done
    return 0
}

# A hermetic Git: no user or system config, a private HOME, fixed identities.
export HOME=$TMP/home LC_ALL=C TZ=UTC
export GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_SYSTEM=/dev/null GIT_CONFIG_NOSYSTEM=1 GIT_TERMINAL_PROMPT=0
export GIT_AUTHOR_NAME="Bench Submitter" GIT_AUTHOR_EMAIL=bench@example.test
export GIT_COMMITTER_NAME="Bench Submitter" GIT_COMMITTER_EMAIL=bench@example.test
unset GIT_DIR GIT_WORK_TREE GIT_DISPATCH_FAILPOINT
for v in $(env | sed -n 's/^\(GIT_DISPATCH_[A-Z_]*\)=.*/\1/p'); do unset "$v"; done
# BENCH_CGROUP=v1|v2|none: the cgroup hierarchy the dispatchers drive (GIT_DISPATCH_CGROUP).
[[ -n ${BENCH_CGROUP:-} ]] && export GIT_DISPATCH_CGROUP=$BENCH_CGROUP

# A file descriptor to sleep on without forking: `read -t` on a pipe nobody writes to.
exec {SLEEP_FD}<> <(:)
nap() { read -r -t "$1" -u "$SLEEP_FD" _ || true; }
# settle: before each timed run, write out what the runs before left in the page cache, so that its
# writeback does not fall on the next program's file syncs (the starter's leftovers made the drain
# of figure 1 take 3.6 s instead of 2.5-2.7 s, in two alternating pairs).
settle() { sync; }

# handler_loop SUBMIT: the world's handler run on each of its N requests from a plain shell loop, in
# the submitter's clone SUBMIT; sets LOOP_TIME (seconds).
handler_loop() {
    local reqs t0 t1
    cd "$1"
    reqs=(requests/req-*.yml)
    ((${#reqs[@]} == N)) || die "expected $N requests in $1/requests, found ${#reqs[@]}"
    settle
    t0=$(now)
    for f in "${reqs[@]}"; do ./handlers/echo.sh "$f" >/dev/null; done
    t1=$(now)
    cd "$TMP"
    LOOP_TIME=$(calc '%.3f' "$t1 - $t0")
}

# --- helpers --------------------------------------------------------------------------------------
# mkworld DIR N: the baseline's world, made traversable for the handlers' user.
mkworld() {
    "$MKWORLD" "$1" "$2" >/dev/null 2>&1 || die "mkworld.sh $1 $2 failed"
    chmod -R a+rX "$1"
}

# Requests still in the remote's inbox (dotfiles aside), and outcome commits on the remote.
inbox_left() { git --git-dir "$1" ls-tree --name-only main requests/ | sed 's|^requests/||' | grep -cv '^\.' || true; }
dispatch_ids() {
    git --git-dir "$1" log main --format='%(trailers:key=Dispatch-Id,valueonly,separator=)' | grep -c . || true
}

# The dispatcher's own resident memory and CPU ticks.
rss_kib() {
    local key value _
    while read -r key value _; do
        if [[ $key == VmRSS: ]]; then
            echo "$value"
            return 0
        fi
    done <"/proc/$1/status"
    echo 0
}
# cpu_ticks PID -> "UTIME+STIME CUTIME+CSTIME"
cpu_ticks() {
    local stat rest f
    stat=$(<"/proc/$1/stat")
    rest=${stat##*) }
    read -r -a f <<<"$rest"
    echo "$((f[11] + f[12])) $((f[13] + f[14]))"
}
mib() { calc '%.1f' "$1 / 1024"; }

# sample_rss PID FILE: the peak VmRSS (KiB) and the sample count, every 50 ms while PID lives.
sample_rss() {
    local pid=$1 file=$2 peak=0 samples=0 rss
    while kill -0 "$pid" 2>/dev/null; do
        rss=$(rss_kib "$pid" 2>/dev/null) || break
        [[ -n $rss ]] || break
        ((rss > peak)) && peak=$rss
        samples=$((samples + 1))
        echo "$peak $samples" >"$file"
        nap 0.05
    done
}

# drain NAME REMOTE WORKDIR DEADLINE [run options...]: run --until-empty, timed; sets ELAPSED.
# With SAMPLE_RSS=FILE set, VmRSS is sampled every 50 ms into FILE.
drain() {
    local name=$1 remote=$2 work=$3 deadline=$4
    shift 4
    local t0 t1 pid status=0 sampler= watchdog
    settle
    t0=$(now)
    "$BIN" run --until-empty --remote "$remote" --workdir "$work" "$@" </dev/null >"$TMP/$name.log" 2>&1 &
    pid=$!
    BG_PIDS+=("$pid")
    if [[ -n ${SAMPLE_RSS:-} ]]; then
        sample_rss "$pid" "$SAMPLE_RSS" &
        sampler=$!
        BG_PIDS+=("$sampler")
    fi
    # the deadline, with builtins only (a `sleep` child would outlive the watchdog when it is killed)
    (
        end=$((SECONDS + deadline))
        while ((SECONDS < end)); do
            kill -0 "$pid" 2>/dev/null || exit 0
            nap 1
        done
        kill -KILL "$pid" 2>/dev/null
    ) </dev/null >/dev/null 2>&1 &
    watchdog=$!
    BG_PIDS+=("$watchdog")
    wait "$pid" || status=$?
    t1=$(now)
    forget "$pid"
    kill "$watchdog" 2>/dev/null || true
    wait "$watchdog" 2>/dev/null || true
    forget "$watchdog"
    if [[ -n $sampler ]]; then
        wait "$sampler" 2>/dev/null || true
        forget "$sampler"
    fi
    ELAPSED=$(calc '%.3f' "$t1 - $t0")
    if ((status != 0)); then
        say "$name: run --until-empty exited $status (after ${ELAPSED}s; deadline ${deadline}s); its last lines:"
        tail -n 15 "$TMP/$name.log" >&2 || true
        return 1
    fi
}

# check_drained NAME REMOTE EXPECTED_IDS: every request recorded, none left.
FAILURES=0
check_drained() {
    local name=$1 remote=$2 expected=$3 ids left
    ids=$(dispatch_ids "$remote")
    left=$(inbox_left "$remote")
    if ((ids != expected || left != 0)); then
        say "$name: $ids Dispatch-Id trailers on the remote (expected $expected), $left left in requests/"
        FAILURES=$((FAILURES + 1))
    fi
    CHECK_NOTE="$ids Dispatch-Id trailers, $left left in requests/"
}

free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    else
        local p try
        for try in $(seq 1 50); do
            p=$((20000 + RANDOM % 30000))
            (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || {
                echo "$p"
                return 0
            }
        done
        die "no free port found"
    fi
}

# start_daemon BASE: git daemon on 127.0.0.1 serving BASE; sets DAEMON_PID, PORT.
DAEMON_PID=
start_daemon() {
    local base=$1 i
    PORT=$(free_port)
    "$GIT_DAEMON" --reuseaddr --export-all --enable=receive-pack --informative-errors \
        --base-path="$base" --listen=127.0.0.1 --port="$PORT" </dev/null >>"$TMP/daemon.log" 2>&1 &
    DAEMON_PID=$!
    BG_PIDS+=("$DAEMON_PID")
    for i in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || break
        nap 0.05
    done
    die "git daemon does not listen on 127.0.0.1:$PORT (see $TMP/daemon.log)"
}
stop_pid() { # SIGTERM, then SIGKILL after 10 s; returns the exit status
    local pid=$1 i status=0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 200); do
        kill -0 "$pid" 2>/dev/null || break
        # a zombie still answers kill -0: look at its state
        [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]] && break
        nap 0.05
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || status=$?
    forget "$pid"
    return "$status"
}

loop_died() {
    tail -n 10 "$TMP/$1.log" >&2 || true
    die "$1: the dispatcher exited at start (its last lines above)"
}
# start_loop NAME REMOTE WORKDIR [options]: the dispatcher in loop mode; sets LOOP_PID, waits until
# it has made its workdir and had time for its first sync.
start_loop() {
    local name=$1 remote=$2 work=$3 i
    shift 3
    "$BIN" run --remote "$remote" --workdir "$work" --poll-interval "$POLL" "$@" \
        </dev/null >"$TMP/$name.log" 2>&1 &
    LOOP_PID=$!
    BG_PIDS+=("$LOOP_PID")
    for i in $(seq 1 200); do
        [[ -d $work/repo.git ]] && break
        kill -0 "$LOOP_PID" 2>/dev/null || loop_died "$name"
        nap 0.05
    done
    nap 2
    kill -0 "$LOOP_PID" 2>/dev/null || loop_died "$name"
}

# world_with KIND_INDEX_YAML DIR: mkworld DIR 0, plus a schema that allows resource and timeout,
# plus the given index entries appended; handlers are written by the caller before commit_world.
open_world() {
    local dir=$1
    mkworld "$dir" 0
    cat >"$dir/submit/schemas/request.schema.json" <<'S'
{"$schema":"https://json-schema.org/draft/2020-12/schema","type":"object",
 "required":["kind"],"properties":{"kind":{"type":"string"},"id":{"type":"string"},
 "resource":{"type":"string"},"timeout":{"type":"string"},
 "params":{"type":"object"}},"additionalProperties":false}
S
    mkdir -p "$dir/submit/requests"
    : >"$dir/submit/requests/.gitkeep"
}
commit_world() { # DIR MESSAGE
    (cd "$1/submit" && git add -A && git commit -qm "$2" && git push -q origin main 2>/dev/null) ||
        die "could not commit and push in $1/submit"
    chmod -R a+rX "$1"
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# --- the machine ----------------------------------------------------------------------------------
CPU_MODEL=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
[[ -n $CPU_MODEL ]] || CPU_MODEL=$(awk -F': *' '/^(Hardware|cpu model|Processor)/ { print $2; exit }' /proc/cpuinfo)
MODE=default
((QUICK)) && MODE=quick
out "machine: nproc $(nproc), cpu ${CPU_MODEL:-unknown}, $(git --version), $("$BIN" --version 2>/dev/null | head -n1), kernel $(uname -r)"
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ $REV != unknown && -n $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
    REV="$REV + uncommitted changes in src/ or Cargo.*"
fi
out "source: $ROOT at $REV (release build took ${BUILD_SECS} s)"
out "mode: $MODE (N=$N, starter N_S=$N_S, idle ${IDLE_SECS}s, history $HISTORY, scale drain $SCALE_N, fleet $FLEET_N on $FLEET_RES resources), baseline scripts from $SHARED"

# --- 1 + 5: throughput and peak RSS ---------------------------------------------------------------
if want 1 || want 5; then
# The starter: as run-seed.sh does it (a worker clone, then timed), on a world of N_S requests.
STARTER_RATE=
if command -v yq >/dev/null; then
    say "1: the starter on $N_S requests"
    W=$TMP/starter
    mkworld "$W" "$N_S"
    git clone -q "$W/remote.git" "$W/worker" 2>/dev/null
    git -C "$W/worker" config user.email worker@example.org
    git -C "$W/worker" config user.name worker
    settle
    t0=$(now)
    status=0
    (cd "$W/worker" && timeout --signal=KILL $((60 + N_S * 5)) "$STARTER") >"$TMP/starter.log" 2>&1 || status=$?
    t1=$(now)
    ST_ELAPSED=$(calc '%.3f' "$t1 - $t0")
    st_done=$(git --git-dir "$W/remote.git" ls-tree --name-only main processed/ | grep -c '\.status$' || true)
    st_left=$(inbox_left "$W/remote.git")
    if ((status != 0 || st_done != N_S || st_left != 0)); then
        say "the starter exited $status: $st_done statuses pushed, $st_left left (see below)"
        tail -n 10 "$TMP/starter.log" >&2 || true
        FAILURES=$((FAILURES + 1))
    fi
    STARTER_RATE=$(calc '%.2f' "$N_S / $ST_ELAPSED")
    out "1 throughput, starter: $N_S requests in ${ST_ELAPSED} s = $STARTER_RATE req/s ($st_done statuses pushed, $st_left left in requests/)"
    rm -rf "$W"
else
    out "1 throughput, starter: skipped (no yq on PATH; the starter needs the Python yq)"
fi

# throughput NAME WORLD WORK ARGS...: drains a fresh world of N requests at WORLD with `run
# --until-empty --jobs 1 ARGS` in WORK; prints its rate and its ratio to the starter's, sets ELAPSED
# and RATE.
throughput() {
    local name=$1 world=$2 work=$3
    shift 3
    local what="git-dispatch run --until-empty --jobs 1${*:+ $*}"
    say "1: $what on $N requests"
    mkworld "$world" "$N"
    drain "$name" "$world/remote.git" "$work" $((120 + N)) --jobs 1 "$@" || FAILURES=$((FAILURES + 1))
    check_drained "1 $name" "$world/remote.git" "$N"
    RATE=$(calc '%.2f' "$N / $ELAPSED")
    out "1 throughput, $what: $N requests in ${ELAPSED} s = $RATE req/s (incl. its first clone; $CHECK_NOTE)"
    if [[ -n $STARTER_RATE ]]; then
        out "1 throughput ratio, $what / starter: $(calc '%.1f' "$RATE / $STARTER_RATE")x [target >= 100x]"
    fi
}
W=$TMP/w1
SAMPLE_RSS=$TMP/rss1.txt throughput gd1 "$W" "$TMP/work1"
GD_ELAPSED=$ELAPSED
read -r PEAK SAMPLES <"$TMP/rss1.txt" || PEAK=0 SAMPLES=0
out "5 peak RSS of the dispatcher draining $N requests: $(mib "$PEAK") MiB (VmRSS, $SAMPLES samples every 50 ms) [target < 30 MiB]"

fi

# --- 2: the handlers alone ------------------------------------------------------------------------
if want 2; then
say "2: the handler alone, $N times from a shell loop"
handler_loop "$W/submit"
LOOP_ELAPSED=$LOOP_TIME
out "2 handlers alone: $N x handlers/echo.sh from a shell loop in ${LOOP_ELAPSED} s ($(calc '%.2f' "$LOOP_ELAPSED * 1000 / $N") ms each)"
out "2 git-dispatch time / handlers alone: ${GD_ELAPSED} s / ${LOOP_ELAPSED} s = $(calc '%.2f' "$GD_ELAPSED / $LOOP_ELAPSED")x [target <= 3x]"
rm -rf "$W" "$TMP/work1"

fi

# --- 3: concurrency -------------------------------------------------------------------------------
if want 3; then
slow_world() {
    local dir=$1 i
    open_world "$dir"
    printf '#!/bin/sh\nsleep 1\n' >"$dir/submit/handlers/slow.sh"
    chmod 755 "$dir/submit/handlers/slow.sh"
    printf 'slow:\n  handler: slow.sh\n' >>"$dir/submit/handlers/index.yml"
    for i in 1 2 3 4 5 6 7 8; do
        printf 'kind: slow\nid: slow-%d\nresource: r%d\n' "$i" "$i" >"$dir/submit/requests/slow-$i.yml"
    done
    commit_world "$dir" "8 slow requests on r1..r8"
}
declare -A CONC
for jobs in 8 1; do
    say "3: 8 x sleep 1 with --jobs $jobs"
    W=$TMP/slow$jobs
    slow_world "$W"
    drain "slow$jobs" "$W/remote.git" "$TMP/work-slow$jobs" 120 --jobs "$jobs" || FAILURES=$((FAILURES + 1))
    CONC[$jobs]=$ELAPSED
    check_drained "3 --jobs $jobs" "$W/remote.git" 8
    rm -rf "$W" "$TMP/work-slow$jobs"
done
out "3 concurrency, 8 x 'sleep 1' on resources r1..r8, run --until-empty --jobs 8: ${CONC[8]} s [target about 1 s, not 8]"
out "3 concurrency, the same with --jobs 1: ${CONC[1]} s"

fi

# --- 4: idle --------------------------------------------------------------------------------------
if want 4; then
idle() { # NAME REMOTE WORKDIR LABEL
    local name=$1 remote=$2 work=$3 label=$4 c0 c1 rss0 rss1 t0 t1 status=0
    start_loop "$name" "$remote" "$work"
    read -r c0 cc0 < <(cpu_ticks "$LOOP_PID")
    rss0=$(rss_kib "$LOOP_PID")
    t0=$(now)
    nap "$IDLE_SECS"
    read -r c1 cc1 < <(cpu_ticks "$LOOP_PID")
    rss1=$(rss_kib "$LOOP_PID")
    t1=$(now)
    stop_pid "$LOOP_PID" || status=$?
    if ((status != 0)); then
        say "$name: the dispatcher exited $status on SIGTERM"
        tail -n 10 "$TMP/$name.log" >&2 || true
        FAILURES=$((FAILURES + 1))
    fi
    local secs
    secs=$(calc '%.2f' "$t1 - $t0")
    out "4 idle, $label, --poll-interval $POLL, ${secs} s: CPU $(calc '%.3f' "($c1 - $c0) * 100 / $TICKS / $secs")% of one core ($((c1 - c0)) ticks of 1/$TICKS s; reaped children $((cc1 - cc0)) ticks), RSS $(mib "$rss0") MiB at the start, $(mib "$rss1") MiB at the end [targets < 1%, no growth]"
}
say "4: idle for ${IDLE_SECS}s, remote a local path"
W=$TMP/idle
mkworld "$W" 0
idle idle-local "$W/remote.git" "$TMP/work-idle-local" "remote a local path"
say "4: idle for ${IDLE_SECS}s, remote served by git daemon"
start_daemon "$W"
idle idle-daemon "git://127.0.0.1:$PORT/remote.git" "$TMP/work-idle-daemon" "remote git:// (git daemon)"
stop_pid "$DAEMON_PID" || true
rm -rf "$W" "$TMP"/work-idle-*

fi

# --- 6: pickup latency ----------------------------------------------------------------------------
if want 6; then
MARKS=$TMP/marks
mkdir -p "$MARKS"
chmod 1777 "$MARKS"
latency() { # NAME DISPATCHER_REMOTE SUBMITTER_REMOTE WORLD LABEL [RUN OPTIONS...]; $HOOK, when
    # set, is run after each push, as a forge sends its push webhook
    local name=$1 remote=$2 push_to=$3 dir=$4 label=$5 i t_start t_push t_mark lat lats=() pushes=() k
    shift 5
    rm -f "$MARKS"/*
    git -C "$dir/submit" remote set-url origin "$push_to"
    BENCH_MARK=$MARKS start_loop "$name" "$remote" "$TMP/work-$name" "$@"
    for ((i = 1; i <= LAT_RUNS; i++)); do
        # a random phase against the poll interval
        nap "0.$((RANDOM % 10))$((RANDOM % 10))"
        printf 'kind: mark\nid: %s-%d\n' "$name" "$i" >"$dir/submit/requests/$name-$i.yml"
        git -C "$dir/submit" add requests
        git -C "$dir/submit" commit -qm "request $name-$i"
        t_start=$(now)
        git -C "$dir/submit" push -q origin main 2>>"$TMP/submit.log" || die "$name: the submitter's push failed (see $TMP/submit.log)"
        t_push=$(now)
        [[ -n ${HOOK:-} ]] && $HOOK
        for k in $(seq 1 300); do
            [[ -s $MARKS/$name-$i ]] && break
            nap 0.01
        done
        if [[ ! -s $MARKS/$name-$i ]]; then
            tail -n 10 "$TMP/$name.log" >&2 || true
            die "$name: request $i was not picked up within about 10 s (the dispatcher's last lines above)"
        fi
        t_mark=$(<"$MARKS/$name-$i")
        lat=$(calc '%.1f' "($t_mark - $t_push) * 1000")
        lats+=("$lat")
        pushes+=("$(calc '%.1f' "($t_push - $t_start) * 1000")")
        # wait for the outcome on the remote, then bring the submitter up to date
        for k in $(seq 1 200); do
            (($(dispatch_ids "$dir/remote.git") >= i)) && break
            nap 0.05
        done
        (($(dispatch_ids "$dir/remote.git") >= i)) || die "$name: the outcome of request $i was not pushed within 10 s"
        git -C "$dir/submit" pull -q --ff-only origin main 2>>"$TMP/submit.log" || die "$name: the submitter's pull failed"
    done
    stop_pid "$LOOP_PID" || true
    local sorted
    sorted=$(printf '%s\n' "${lats[@]}" | sort -g)
    out "6 pickup latency, $label: min/median/max $(head -n1 <<<"$sorted")/$(printf '%s\n' "${lats[@]}" | median)/$(tail -n1 <<<"$sorted") ms over $LAT_RUNS pushes (push end -> handler start: ${lats[*]} ms; the pushes took ${pushes[*]} ms, and a negative figure means the handler started before \`git push\` returned)"
}
mark_world() {
    local dir=$1
    open_world "$dir"
    printf '#!/bin/sh\ndate +%%s.%%N >"$BENCH_MARK/$DISPATCH_ID"\n' >"$dir/submit/handlers/mark.sh"
    chmod 755 "$dir/submit/handlers/mark.sh"
    # The handler writes its mark outside its working directory: a `writable:` path (isolation).
    printf 'mark:\n  handler: mark.sh\n  env: [BENCH_MARK]\n  writable: [%s]\n' "$MARKS" >>"$dir/submit/handlers/index.yml"
    commit_world "$dir" "the mark kind"
}
say "6: pickup latency, git daemon"
W=$TMP/lat-daemon
mark_world "$W"
start_daemon "$W"
latency lat-daemon "git://127.0.0.1:$PORT/remote.git" "git://127.0.0.1:$PORT/remote.git" "$W" \
    "remote git:// (git daemon), --poll-interval $POLL [target about the poll interval + 100 ms]"
stop_pid "$DAEMON_PID" || true
rm -rf "$W" "$TMP/work-lat-daemon"
say "6: pickup latency, git daemon with a push webhook"
W=$TMP/lat-hook
mark_world "$W"
start_daemon "$W"
HOOK_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'bench-webhook-secret' >"$TMP/hook-secret"
chmod 600 "$TMP/hook-secret"
# What GitHub sends after a push: the body signed with the shared secret (signed once; curl posts
# it, as python's start-up alone takes ~120 ms here).
HOOK_BODY='{"ref":"refs/heads/main"}'
HOOK_SIG=sha256=$(printf '%s' "$HOOK_BODY" | openssl dgst -sha256 -hmac bench-webhook-secret | awk '{print $NF}')
post_hook() {
    curl -sf -o /dev/null -X POST -H "X-Hub-Signature-256: $HOOK_SIG" -H 'X-GitHub-Event: push' \
        -H 'Content-Type: application/json' --data "$HOOK_BODY" "http://127.0.0.1:$HOOK_PORT/hooks/push"
}
HOOK=post_hook latency lat-hook "git://127.0.0.1:$PORT/remote.git" "git://127.0.0.1:$PORT/remote.git" "$W" \
    "remote git:// (git daemon), --poll-interval $POLL, a push webhook after each push [target p50 < 100 ms]" \
    --http-addr "127.0.0.1:$HOOK_PORT" --webhook-secret-file "$TMP/hook-secret"
stop_pid "$DAEMON_PID" || true
rm -rf "$W" "$TMP/work-lat-hook"
say "6: pickup latency, local path"
W=$TMP/lat-local
mark_world "$W"
latency lat-local "$W/remote.git" "$W/remote.git" "$W" \
    "remote a local path (inotify), --poll-interval $POLL [target < 100 ms]"
rm -rf "$W" "$TMP/work-lat-local"

fi

# --- 7: scale with history ------------------------------------------------------------------------
if want 7; then
# write_history GIT_DIR N: one commit on main adding N old outcomes where the dispatcher puts them
# (processed/S/ID.yml, processed/S/ID.status.json and logs/S/ID.log, S the id's shard: the first three
# hex digits of its SHA-256, one folder each), ids old-000001..., written with git fast-import.
write_history() {
    local gd=$1 n=$2
    python3 - "$n" <<'PY' | git --git-dir "$gd" fast-import --quiet || return 1
import hashlib, sys, time
n = int(sys.argv[1])
out = sys.stdout.buffer
def data(text):
    raw = text.encode()
    out.write(b"data %d\n" % len(raw) + raw + b"\n")
message = "history: %d recorded outcomes" % n
out.write(b"commit refs/heads/main\n")
out.write(b"committer Bench <bench@example.test> %d +0000\n" % int(time.time()))
data(message)
out.write(b"from refs/heads/main^0\n")
for i in range(1, n + 1):
    key = "old-%06d" % i
    shard = "/".join(hashlib.sha256(key.encode()).hexdigest()[:3])
    files = {
        "processed/%s/%s.yml" % (shard, key):
            'id: %s\nkind: echo\nparams:\n  message: "hello %d"\n' % (key, i),
        "processed/%s/%s.status.json" % (shard, key):
            '{"id":"%s","kind":"echo","state":"succeeded","exit_code":0,"attempts":1,'
            '"duration_ms":3,"log":"logs/%s/%s.log"}\n' % (key, shard, key),
        "logs/%s/%s.log" % (shard, key): "id: %s\nkind: echo\n" % key,
    }
    for path, text in files.items():
        out.write(b"M 100644 inline %s\n" % path.encode())
        data(text)
PY
}
# requests_stream N PREFIX: one commit on main adding N new echo requests PREFIX-0001...
requests_stream() {
    awk -v n="$1" -v pfx="$2" -v ts="$(date +%s)" 'BEGIN {
        msg = "submit " n " requests"
        print "commit refs/heads/main"
        print "committer Bench <bench@example.test> " ts " +0000"
        print "data " length(msg); print msg
        print "from refs/heads/main^0"
        for (i = 1; i <= n; i++) {
            id = sprintf("%s-%04d", pfx, i)
            y = "id: " id "\nkind: echo\nparams:\n  message: \"hello " i "\"\n"
            print "M 100644 inline requests/" id ".yml"; print "data " length(y); printf "%s\n", y
        }
    }'
}
# Both worlds first (the history, the dispatcher's clone), then SCALE_ROUNDS rounds that each drain
# SCALE_N new requests over 0 and over HISTORY outcomes in turn: the machine's swings then fall on
# both sides alike, and the ratio is of the medians.
declare -A CLONE_NOTE SCALE_RUNS SCALE_PEAK SCALE_CHECK
for hist in 0 "$HISTORY"; do
    W=$TMP/scale$hist
    mkworld "$W" 0
    import_note=
    if ((hist > 0)); then
        say "7: writing $hist recorded outcomes (git fast-import)"
        t0=$(now)
        write_history "$W/remote.git" "$hist" || die "writing the history failed"
        import_note="; the history was written (fast-import) in $(calc '%.1f' "$(now) - $t0") s"
    fi
    say "7: the dispatcher's first run over $hist recorded outcomes (its clone, an empty inbox)"
    drain "scale$hist-clone" "$W/remote.git" "$TMP/work-scale$hist" 600 --jobs 1 || FAILURES=$((FAILURES + 1))
    CLONE_NOTE[$hist]="first run, the clone with an empty inbox: ${ELAPSED} s$import_note"
    SCALE_PEAK[$hist]=0
done
for round in $(seq 1 "$SCALE_ROUNDS"); do
    for hist in 0 "$HISTORY"; do
        W=$TMP/scale$hist
        requests_stream "$SCALE_N" "round$round" | git --git-dir "$W/remote.git" fast-import --quiet ||
            die "git fast-import of the requests failed"
        say "7: round $round, draining $SCALE_N requests over $hist recorded outcomes"
        SAMPLE_RSS=$TMP/rss-scale$hist.txt drain "scale$hist" "$W/remote.git" "$TMP/work-scale$hist" $((300 + SCALE_N * 10)) --jobs 1 ||
            FAILURES=$((FAILURES + 1))
        read -r PEAK SAMPLES <"$TMP/rss-scale$hist.txt" || PEAK=0 SAMPLES=0
        ((PEAK > SCALE_PEAK[$hist])) && SCALE_PEAK[$hist]=$PEAK
        SCALE_RUNS[$hist]+=" $(calc '%.2f' "$ELAPSED * 1000 / $SCALE_N")"
        check_drained "7 history $hist" "$W/remote.git" $((SCALE_N * round))
        SCALE_CHECK[$hist]=$CHECK_NOTE
    done
done
declare -A SCALE
for hist in 0 "$HISTORY"; do
    SCALE[$hist]=$(tr ' ' '\n' <<<"${SCALE_RUNS[$hist]}" | grep . | median)
    out "7 scale, $hist recorded outcomes in processed/ and logs/: median ${SCALE[$hist]} ms/request over $SCALE_ROUNDS drains of $SCALE_N requests (ms/request:${SCALE_RUNS[$hist]}), run --until-empty --jobs 1 on a warm workdir (peak RSS $(mib "${SCALE_PEAK[$hist]}") MiB; ${SCALE_CHECK[$hist]}; ${CLONE_NOTE[$hist]})"
    rm -rf "$TMP/scale$hist" "$TMP/work-scale$hist"
done
out "7 scale ratio of the medians, ms/request at $HISTORY / at 0: $(calc '%.2f' "${SCALE[$HISTORY]} / ${SCALE[0]}")x [target <= 1.2x]"

fi

# --- 8, 9: several dispatchers, the cost of claims -------------------------------------------------
# shellcheck source=scripts/bench-fleet.sh
source "$ROOT/scripts/bench-fleet.sh"

out "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (at the start: $LOAD0; other work on the machine skews the figures)"
out "bench: $MODE mode took $((SECONDS - STARTED)) s (build ${BUILD_SECS} s); $FAILURES problem(s)"
((FAILURES == 0)) || exit 1
exit 0
