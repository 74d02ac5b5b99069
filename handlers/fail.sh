#!/bin/sh
# fail: exits with `params.code` after saying so on standard error.
code=$(printf '%s' "$DISPATCH_PARAMS" | sed -n 's/.*"code":\([0-9]*\).*/\1/p')
echo "failing on purpose with exit code ${code:-1}" >&2
exit "${code:-1}"
