#!/bin/sh
# echo: prints the request it was given (argv[1]) and its id; and the fixed clock and greeting a
# replay fixture may set.
echo "request $DISPATCH_ID (attempt $DISPATCH_ATTEMPT):"
cat "$1"
if [ -n "$DISPATCH_NOW" ]; then echo "now: $DISPATCH_NOW"; fi
if [ -n "$GREETING" ]; then echo "greeting: $GREETING"; fi
