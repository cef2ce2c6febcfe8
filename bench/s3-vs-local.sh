#!/usr/bin/env bash
# Backup and restore throughput of Lifeboat into a local directory vs a local S3 server
# (ministack), on the same data, in one run. Prints a Markdown table (docs/BENCHMARKS.md).
#   bench/s3-vs-local.sh [SIZE_MIB]     (default 1024: half random, half compressible text)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
size_mib="${1:-1024}"
cd "$root"
cargo build --release --quiet --locked -p backup-cli -p restore-cli
B="$root/target/release/lifeboat-backup"
R="$root/target/release/lifeboat-restore"
# shellcheck source=bench/ministack.sh
. "$root/bench/ministack.sh"

work="$(mktemp -d -t lifeboat-bench.XXXXXX)"
ms_pid=""
cleanup() { [ -n "$ms_pid" ] && kill "$ms_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

data="$work/data.bin"
half=$((size_mib / 2))
head -c "${half}M" /dev/urandom > "$data"
python3 - "$data" "$half" <<'PY'
import random, sys
r = random.Random(42)
words = [("w%05d" % i) for i in range(5000)]
with open(sys.argv[1], "ab") as f:
    left = int(sys.argv[2]) << 20
    while left > 0:
        line = (" ".join(r.choice(words) for _ in range(12)) + "\n").encode()
        block = line * 64
        f.write(block[:left]); left -= len(block)
PY

start_ministack bench
port=$ms_port

echo pw > "$work/pw"
export LIFEBOAT_PASSWORD_FILE="$work/pw" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench \
       AWS_ENDPOINT_URL="http://127.0.0.1:$port" LIFEBOAT_S3_PATH_STYLE=true
timed() { # prints "seconds peak_rss_kib"
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >/dev/null
  cat "$work/time"
}
mibs() { python3 -c "print(f'{$size_mib / $1:.0f}')"; }

echo "| store | backup s | backup MiB/s | backup RSS MiB | restore s | restore MiB/s | restore RSS MiB |"
echo "|---|---|---|---|---|---|---|"
for repo in "$work/local-repo" "s3://bench/repo"; do
  export LIFEBOAT_REPOSITORY="$repo" LIFEBOAT_CACHE_DIR="$work/cache-$(basename "$repo")"
  "$B" init --kdf-memory-mib 16 -q
  cat "$data" > /dev/null   # warm the page cache for the source
  read -r bs brss < <(timed "$B" run -q --command "data=cat $data")
  read -r rs rrss < <(timed sh -c "\"$R\" export latest data -o - > /dev/null")
  name=$([ "${repo#s3://}" != "$repo" ] && echo "S3 (ministack, loopback)" || echo "local directory")
  echo "| $name | $bs | $(mibs "$bs") | $((brss / 1024)) | $rs | $(mibs "$rs") | $((rrss / 1024)) |"
done
