# Figures 8 and 9 of scripts/bench.sh (sourced by it, after its helpers): several dispatchers on one
# `git daemon` remote, and what the claims cost one dispatcher alone.
#
#   8  scale-out: FLEET_N requests of a 200 ms handler on FLEET_RES resources, drained by 1, 2 and 4
#      dispatchers (`run --jobs 2`, loop mode, each with its own --dispatcher-id, workdir and lock
#      dir) on one `git daemon` remote: the time from their start until the remote records every
#      id, and the throughput ratios 4 / 1 and 2 / 1
#   9  the cost of claims: one dispatcher, N trivial `echo` requests over `git daemon` (`run
#      --until-empty --jobs 1`), its time over the same handler run N times from a shell loop, and
#      the overhead per request in ms
#
# FLEET_KS="4" (default "1 2 4") drains with those numbers of dispatchers only.
#
# A handler run twice, a duplicate outcome, an id left unrecorded or a request left in the inbox
# counts as a problem.

# distinct_ids GIT_DIR: how many ids the remote's branch records (each once or more).
distinct_ids() {
    git --git-dir "$1" log main --format='%(trailers:key=Dispatch-Id,valueonly,separator=)' | { grep . || true; } | sort -u | wc -l
}

# --- 8: scale-out ---------------------------------------------------------------------------------
if want 8; then
# fleet_world DIR: FLEET_N `nap` requests (sleep 0.2, then its id appended to $BENCH_RUNS) on
# resources r00.. round robin over FLEET_RES.
fleet_world() {
    local dir=$1 i
    open_world "$dir"
    printf '#!/bin/sh\nsleep 0.2\necho "$DISPATCH_ID" >>"$BENCH_RUNS"\n' >"$dir/submit/handlers/nap.sh"
    chmod 755 "$dir/submit/handlers/nap.sh"
    # The runs file's folder is writable for isolated handlers (their /tmp is private).
    printf 'nap:\n  handler: nap.sh\n  env: [BENCH_RUNS]\n  writable: [%s]\n' "$TMP/runs" >>"$dir/submit/handlers/index.yml"
    for ((i = 1; i <= FLEET_N; i++)); do
        printf 'kind: nap\nid: nap-%04d\nresource: r%02d\n' "$i" $((i % FLEET_RES)) >"$dir/submit/requests/nap-$i.yml"
    done
    commit_world "$dir" "$FLEET_N nap requests on $FLEET_RES resources"
}
# fleet K: K dispatchers drain a fresh world; sets FLEET_ELAPSED[K].
declare -A FLEET_ELAPSED
fleet() {
    local k=$1 dir=$TMP/fleet$1 i pids=() t0 t1 deadline got=0 total left status runs
    say "8: $k dispatcher(s), $FLEET_N requests of 200 ms on $FLEET_RES resources, --jobs 2 each"
    fleet_world "$dir"
    # Where the handlers (perhaps another user's) note each run.
    mkdir -p "$TMP/runs"
    chmod 1777 "$TMP/runs"
    export BENCH_RUNS=$TMP/runs/fleet$k
    start_daemon "$dir"
    settle
    t0=$(now)
    for ((i = 1; i <= k; i++)); do
        "$BIN" run --remote "git://127.0.0.1:$PORT/remote.git" --workdir "$TMP/work-fleet$k-$i" \
            --lock-dir "$TMP/locks-fleet$k-$i" --dispatcher-id "bench-$i" --jobs 2 \
            --poll-interval 200ms --log-format json </dev/null >"$TMP/fleet$k-$i.log" 2>&1 &
        pids+=("$!")
        BG_PIDS+=("$!")
    done
    deadline=$((SECONDS + 120 + FLEET_N))
    while ((SECONDS < deadline)); do
        got=$(distinct_ids "$dir/remote.git")
        ((got >= FLEET_N)) && break
        nap 0.1
    done
    t1=$(now)
    for i in "${pids[@]}"; do
        status=0
        stop_pid "$i" || status=$?
        ((status == 0)) || say "8: a dispatcher exited $status on SIGTERM (see $TMP/fleet$k-*.log)"
    done
    FLEET_ELAPSED[$k]=$(calc '%.3f' "$t1 - $t0")
    total=$(dispatch_ids "$dir/remote.git")
    got=$(distinct_ids "$dir/remote.git")
    left=$(inbox_left "$dir/remote.git")
    runs=$(wc -l <"$BENCH_RUNS" 2>/dev/null || echo 0)
    if ((got != FLEET_N || total != FLEET_N || left != 0 || runs != FLEET_N)); then
        say "8 $k dispatcher(s): $runs handler runs and $total outcome commits for $got ids (expected $FLEET_N each), $left left in requests/"
        FAILURES=$((FAILURES + 1))
    fi
    out "8 scale-out, $k dispatcher(s) x --jobs 2 on one git daemon: $FLEET_N requests of 200 ms on $FLEET_RES resources in ${FLEET_ELAPSED[$k]} s = $(calc '%.2f' "$FLEET_N / ${FLEET_ELAPSED[$k]}") req/s (from their start to every id recorded, incl. their first clones; $runs handler runs and $total outcome commits for $got ids, $left left in requests/)"
    stop_pid "$DAEMON_PID" || true
    rm -rf "$dir" "$TMP"/work-fleet"$k"-* "$TMP"/locks-fleet"$k"-*
}
for k in ${FLEET_KS:-1 2 4}; do fleet "$k"; done
if [[ -n ${FLEET_ELAPSED[1]:-} && -n ${FLEET_ELAPSED[4]:-} ]]; then
    out "8 scale-out throughput ratio, 4 dispatchers / 1: $(calc '%.2f' "${FLEET_ELAPSED[1]} / ${FLEET_ELAPSED[4]}")x [target >= 3.5x]"
fi
if [[ -n ${FLEET_ELAPSED[1]:-} && -n ${FLEET_ELAPSED[2]:-} ]]; then
    out "8 scale-out throughput ratio, 2 dispatchers / 1: $(calc '%.2f' "${FLEET_ELAPSED[1]} / ${FLEET_ELAPSED[2]}")x [ideal 2x]"
fi
fi

# --- 9: the cost of claims ------------------------------------------------------------------------
if want 9; then
say "9: one dispatcher, $N echo requests over git daemon"
W=$TMP/claims
mkworld "$W" "$N"
start_daemon "$W"
drain claims "git://127.0.0.1:$PORT/remote.git" "$TMP/work-claims" $((120 + N)) --jobs 1 \
    --dispatcher-id bench || FAILURES=$((FAILURES + 1))
CLAIMS_ELAPSED=$ELAPSED
stop_pid "$DAEMON_PID" || true
check_drained "9" "$W/remote.git" "$N"
say "9: the handler alone, $N times from a shell loop"
handler_loop "$W/submit"
CLAIMS_LOOP=$LOOP_TIME
out "9 one dispatcher over git daemon, run --until-empty --jobs 1: $N echo requests in ${CLAIMS_ELAPSED} s = $(calc '%.2f' "$N / $CLAIMS_ELAPSED") req/s (incl. its first clone; $CHECK_NOTE); the handler alone from a shell loop: ${CLAIMS_LOOP} s"
out "9 cost of claims, git-dispatch over git daemon / handler alone: $(calc '%.2f' "$CLAIMS_ELAPSED / $CLAIMS_LOOP")x [target <= 1.5x]; overhead $(calc '%.2f' "($CLAIMS_ELAPSED - $CLAIMS_LOOP) * 1000 / $N") ms per request"
rm -rf "$W" "$TMP/work-claims"
fi
