#!/usr/bin/env python3
"""notify: posts `params.text` as a JSON message (`{"text": ...}`, what Slack's, Mattermost's and
most chat tools' incoming webhooks take) to the URL in the host's secret NOTIFY_WEBHOOK_URL.

Made for follow-ups: `on_failure: [{kind: notify, params: {text: "${parent.id} ${parent.state}"}}]`.
Exits 1 when the post fails (the answer's status and body are in the log; the URL is a secret and
never printed)."""
import json
import os
import sys
import urllib.error
import urllib.request

request = json.load(sys.stdin)
text = request.get("params", {})["text"]
url = os.environ.get("NOTIFY_WEBHOOK_URL", "")
if not url.startswith(("http://", "https://")):
    print("NOTIFY_WEBHOOK_URL is not an http(s) URL", file=sys.stderr)
    sys.exit(2)
body = json.dumps({"text": text}).encode()
post = urllib.request.Request(
    url, data=body, headers={"Content-Type": "application/json"}, method="POST"
)
try:
    with urllib.request.urlopen(post, timeout=20) as answer:
        print(f"posted {len(body)} bytes: {answer.status} {answer.read(200).decode(errors='replace')}")
except urllib.error.HTTPError as e:
    print(f"the webhook answered {e.code}: {e.read(200).decode(errors='replace')}", file=sys.stderr)
    sys.exit(1)
except (urllib.error.URLError, OSError) as e:
    print(f"could not post: {getattr(e, 'reason', e)}", file=sys.stderr)
    sys.exit(1)
