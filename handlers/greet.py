#!/usr/bin/env python3
"""greet: reads the request as JSON on standard input and greets `params.name`, `params.times` times."""
import json
import sys

request = json.load(sys.stdin)
params = request.get("params", {})
for _ in range(params.get("times", 1)):
    print(f"hello, {params['name']}!")
print(f"greeted on behalf of request {request.get('id', '(id from file name)')}", file=sys.stderr)
