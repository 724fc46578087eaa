#!/usr/bin/env bash
# A screenshot of TensorBoard's scalar page for a log folder, in headless Chromium:
#   scripts/tensorboard_screenshot.sh LOGDIR OUT.png
# Needs the `tensorboard` package (PYTHON, default python3, must import it) and
# Chromium (CHROMIUM, default chromium). TensorBoard listens on 127.0.0.1 only, on a
# free port, and is stopped when the screenshot is taken. Fails when TensorBoard
# lists no run or the screenshot is empty.
set -euo pipefail
logdir="$1"; out="$2"
py="${PYTHON:-python3}"
chromium="${CHROMIUM:-chromium}"
port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
log="$(mktemp)"
"$py" -m tensorboard.main --logdir "$logdir" --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
tb=$!
trap 'kill "$tb" 2>/dev/null || true; rm -f "$log"' EXIT
runs=""
for _ in $(seq 1 90); do
  if runs="$("$py" - "$port" 2>/dev/null <<'PY'
import json, sys, urllib.request
runs = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/data/runs", timeout=2))
print(len(runs))
PY
)" && [ "${runs:-0}" -gt 0 ]; then
    break
  fi
  sleep 1
done
if [ "${runs:-0}" -eq 0 ]; then
  echo "TensorBoard listed no run under $logdir; its log:"; cat "$log"; exit 1
fi
mkdir -p "$(dirname "$out")"
rm -f "$out"
# The scalar dashboard; the virtual time budget lets its scripts load the runs' data.
"$chromium" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1600,1200 \
  --virtual-time-budget=30000 --screenshot="$out" "http://127.0.0.1:$port/?darkMode=false#scalars" >/dev/null 2>&1
test -s "$out" || { echo "no screenshot written to $out"; exit 1; }
echo "TensorBoard scalars ($runs runs): $out"
