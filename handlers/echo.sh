#!/bin/sh
# echo: prints the request it was given (argv[1]) and its id.
echo "request $DISPATCH_ID (attempt $DISPATCH_ATTEMPT):"
cat "$1"
