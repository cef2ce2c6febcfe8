# Sourced by the benchmark scripts: ministack (the S3 test server, pinned, in the ignored
# .ci/venv) on a free loopback port with one bucket.
#   start_ministack BUCKET   sets ms_port and ms_pid; the caller kills ms_pid on exit.
start_ministack() {
  local root; root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if [ ! -x "$root/.ci/venv/bin/ministack" ]; then
    python3 -m venv "$root/.ci/venv" && "$root/.ci/venv/bin/pip" install --quiet ministack==1.5.33
  fi
  ms_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  GATEWAY_PORT=$ms_port BIND_HOST=127.0.0.1 SERVICES=s3 LOG_LEVEL=WARNING "$root/.ci/venv/bin/ministack" >/dev/null 2>&1 &
  ms_pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$ms_port) 2>/dev/null && break; sleep 0.1; done
  python3 -c "import urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:$ms_port/$1', method='PUT'))"
}
