#!/usr/bin/env bash
# Where a backup's CPU time goes: samples the whole machine with `perf record -e cpu-clock`
# (hardware counters are not available on these VMs) during one first backup of FILE, then
# groups the samples into the unavoidable kernels (zstd, SHA-256/HMAC, FastCDC, AES-GCM) and
# the rest, and prints the kernels' single-core floor from the `kernels` example.
#   bench/profile.sh FILE [ZSTD_LEVEL]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
file="$1" level="${2:-1}"
cd "$root"
cargo build --release --quiet --locked -p backup-cli -p backup-core --example kernels
B="$root/target/release/lifeboat-backup"
work="$(mktemp -d -t lifeboat-profile.XXXXXX)"
trap 'rm -rf "$work"' EXIT
echo pw > "$work/pw"
export LIFEBOAT_PASSWORD_FILE="$work/pw"
"$B" -r "$work/repo" init --kdf-memory-mib 16 -q
cat "$file" > /dev/null
/usr/bin/time -f "backup: %e s wall, %P CPU" -o "$work/time" \
  perf record -q -a -e cpu-clock -F 999 -o "$work/perf.data" -- \
  "$B" -r "$work/repo" run -q --compression-level "$level" --command "data=cat $file" 2>/dev/null
cat "$work/time"
perf report -i "$work/perf.data" --stdio --no-children --sort comm,sym 2>/dev/null |
  python3 -c '
import re, sys
groups = {"zstd": 0.0, "SHA-256 / HMAC": 0.0, "FastCDC": 0.0, "AES-256-GCM": 0.0, "rest": 0.0}
idle, rest = 0.0, []
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(.*)", line)
    if not m:
        continue
    p, comm, sym = float(m.group(1)), m.group(2), m.group(3).strip()
    if comm == "swapper":
        idle += p
    elif re.search(r"ZSTD|HUF_|HIST_|FSE_", sym):
        groups["zstd"] += p
    elif "sha2" in sym:
        groups["SHA-256 / HMAC"] += p
    elif "cut_gear" in sym:
        groups["FastCDC"] += p
    elif re.search(r"aes::|polyval|ghash", sym):
        groups["AES-256-GCM"] += p
    else:
        groups["rest"] += p
        rest.append((p, comm, sym))
busy = 100 - idle
print(f"machine busy {busy:.0f}% of the samples; share of the busy time:")
for k, v in groups.items():
    print(f"  {k:16} {v * 100 / busy:5.1f}%")
print("largest in the rest:", ", ".join(f"{s} ({c}) {p:.1f}%" for p, c, s in sorted(rest)[::-1][:8]))
'
"$root/target/release/examples/kernels" "$file" "$level"
