#!/bin/sh
# sleep: sleeps `params.seconds`; the index gives it a 2 s timeout, so a longer sleep times out.
seconds=$(printf '%s' "$DISPATCH_PARAMS" | sed -n 's/.*"seconds":\([0-9]*\).*/\1/p')
echo "sleeping ${seconds:-1}s"
sleep "${seconds:-1}"
echo "awake"
