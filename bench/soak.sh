#!/usr/bin/env bash
# Soak test (not in CI): two "hosts" back up a changing tree into one repository at the same
# time, prunes run with repacking at grace 0, runs are killed with SIGKILL at random moments,
# and after every round `check --read-data` must be clean and sampled snapshots must restore to
# exactly the tree they were taken of. Local and S3 (ministack) repositories.
#
#   bench/soak.sh [--seconds 300] [--stores local,s3] [--files 400] [--seed N]
#
# Prints one line per round and a summary of what was verified; exits 1 on the first
# violation, leaving the work directory for a post-mortem.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=300 stores="local,s3" files=400 seed=$RANDOM
while (($#)); do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --stores) stores=$2; shift 2 ;;
    --files) files=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
RANDOM=$seed
cargo build -q --release --locked -p backup-cli -p restore-cli --manifest-path "$root/Cargo.toml"
lb=$root/target/release/lifeboat-backup lr=$root/target/release/lifeboat-restore
work=$(mktemp -d /tmp/lifeboat-soak.XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
echo soak > "$work/pw"
export LIFEBOAT_PASSWORD_FILE=$work/pw AWS_ACCESS_KEY_ID=soak AWS_SECRET_ACCESS_KEY=soaksoak \
  AWS_REGION=us-east-1 LIFEBOAT_S3_PATH_STYLE=true

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The tree changes between rounds: new files, rewritten files, deleted files, a large file.
mutate_tree() {
  python3 - "$1" "$files" "$RANDOM" <<'EOF'
import os, random, sys
root, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = random.Random(seed)
os.makedirs(root, exist_ok=True)
for _ in range(n // 4 + 1):
    p = os.path.join(root, f"d{r.randrange(8)}", f"f{r.randrange(n)}")
    os.makedirs(os.path.dirname(p), exist_ok=True)
    if r.random() < 0.15 and os.path.exists(p):
        os.remove(p)
    else:
        with open(p, "wb") as f:
            f.write(r.randbytes(r.randrange(100, 20000)))
if r.random() < 0.3:
    with open(os.path.join(root, "big"), "wb") as f:
        f.write(r.randbytes(r.randrange(1, 4) << 20))
EOF
}
digest() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16); }

# Runs a command, killing it with SIGKILL after a random delay in one case out of `odds`.
maybe_kill() {
  local odds=$1; shift
  RANDOM=$((seed + BASHPID + SECONDS))  # subshells would all draw the same numbers
  "$@" >/dev/null 2>>"$work/stderr" &
  local pid=$!
  if ((RANDOM % odds == 0)); then
    # Most runs here take well under a second: kill within the first 400 ms.
    sleep "0.$(printf %03d $((RANDOM % 400)))"
    if kill -9 "$pid" 2>/dev/null; then wait "$pid" 2>/dev/null || true; echo "$*" >>"$work/kills"; return 0; fi
  fi
  wait "$pid" || echo "exit $? from: $*" >>"$work/stderr"
}

soak_one() {
  local store=$1 repo
  if [ "$store" = s3 ]; then
    [ -x "$root/.ci/venv/bin/ministack" ] || { python3 -m venv "$root/.ci/venv" && "$root/.ci/venv/bin/pip" install --quiet ministack==1.5.33; }
    local port; port=$(free_port)
    GATEWAY_PORT=$port BIND_HOST=127.0.0.1 SERVICES=s3 LOG_LEVEL=WARNING "$root/.ci/venv/bin/ministack" >/dev/null 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
    python3 -c "import urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:$port/soak', method='PUT'))"
    export AWS_ENDPOINT_URL=http://127.0.0.1:$port
    repo=s3://soak/repo
  else
    repo=$work/local-repo
  fi
  local tree=$work/tree-$store expect=$work/expect-$store
  : >"$expect"
  "$lb" -r "$repo" --no-cache init --kdf-memory-mib 8 >/dev/null
  local end=$((SECONDS + seconds)) round=0 restored=0 checks=0
  : >"$work/kills"
  while ((SECONDS < end)); do
    round=$((round + 1))
    mutate_tree "$tree"
    local want; want=$(digest "$tree")
    local before; before=$("$lb" -r "$repo" --no-cache snapshots --json | python3 -c 'import json,sys; print(" ".join(s["id"] for s in json.load(sys.stdin) if "damaged" not in s))')
    # Two hosts at once, each with its own cache; either may be killed.
    maybe_kill 3 "$lb" -r "$repo" --cache-dir "$work/hA-$store" run --quiet --stale-after 1m --volume "v=$tree" &
    local host_a=$!
    maybe_kill 3 "$lb" -r "$repo" --cache-dir "$work/hB-$store" run --quiet --stale-after 1m --volume "v=$tree" &
    wait "$host_a" $!  # not a bare wait: ministack is a child too
    # New snapshots are of this round's tree.
    "$lb" -r "$repo" --no-cache snapshots --json | python3 -c '
import json, sys
before = set(sys.argv[1].split())
for s in json.load(sys.stdin):
    if s["id"] not in before and "damaged" not in s:
        print(s["id"], sys.argv[2])' "$before" "$want" >>"$expect"
    # Prune (forget down to the last 6, repack everything), sometimes killed; markers of
    # killed runs count as dead after a minute (a backup after a killed prune waits that long).
    maybe_kill 5 "$lb" -r "$repo" --no-cache prune --keep-last 6 --grace 0s --max-unused 0 --stale-after 1m
    if ! "$lb" -r "$repo" --no-cache check --read-data >"$work/check" 2>&1; then
      echo "round $round ($store): check failed"; cat "$work/check"; exit 1
    fi
    checks=$((checks + 1))
    # Every kept snapshot of the last rounds restores to its tree.
    local live; live=$("$lb" -r "$repo" --no-cache snapshots --json | python3 -c 'import json,sys; print(" ".join(s["id"] for s in json.load(sys.stdin)))')
    for id in $live; do
      local exp; exp=$(awk -v id="$id" '$1 == id {print $2}' "$expect")
      [ -n "$exp" ] || { echo "round $round ($store): snapshot $id was not taken by this soak"; exit 1; }
      ((RANDOM % 2)) || continue
      rm -rf "$work/out"
      "$lr" -r "$repo" --no-cache run "$id" --to "$work/out" >/dev/null 2>"$work/restore.err" ||
        { echo "round $round ($store): restore of $id failed"; cat "$work/restore.err"; exit 1; }
      local got; got=$(digest "$work/out/v")
      [ "$got" = "$exp" ] || { echo "round $round ($store): $id restored $got, expected $exp"; exit 1; }
      restored=$((restored + 1))
    done
    echo "round $round ($store): $(wc -w <<<"$live") snapshots, check clean, $(wc -l <"$work/kills") kills so far"
  done
  echo "SOAK $store: $round rounds, $(wc -l <"$work/kills") processes killed, $checks clean check --read-data, $restored snapshot restores byte-exact (seed $seed)"
}

for s in ${stores//,/ }; do soak_one "$s"; done
rm -rf "$work"
