#!/usr/bin/env bash
# Point-in-time recovery side by side with pgBackRest (Debian's package, 2.45) on one cluster
# and one pgbench load, in one run. Phases (all by default, or --phases a,b,…):
#   base     base backup time and bytes: lifeboat run --pg-base; pgBackRest full (gz, and
#            block incremental with bundles)
#   incr     bytes stored by the next base backup after ~1 % of pgbench_accounts rows were
#            updated at random (lifeboat's second base backup; pgBackRest incr, file-level and
#            block)
#   wal      ≥ --wal-mib of pgbench WAL archived by both, for the restore
#   restore  restore to the end of the archive and replay it, timed until PostgreSQL accepts
#            connections and `sync` returns: lifeboat pitr --start; pgBackRest restore +
#            archive-get (sync and async); floor: PostgreSQL replaying the WAL from pg_wal
#   archive  one archive_command call per segment over --segments real segments, as
#            PostgreSQL calls it: segments/s and CPU per segment (whole-machine busy time from
#            /proc/stat), lifeboat with and without look-ahead, pgBackRest sync and async;
#            floor: cp + sync per segment
#   keepup   pgbench at full speed for --seconds with each tool as archive_command
#            (archive_timeout 60), its TPC-B load and a bulk-insert load: WAL rate, TPS, the
#            .ready backlog over time, and the delay from a marker row's commit to its
#            segment being durable in the repository (RPO)
#   s3       requests per GiB of WAL pushed into ministack (lifeboat; pgBackRest over TLS)
#   stream   wal stream and archive_command (archive_timeout 60) into ministack, under
#            pgbench at full speed and at 20 TPS: commit to durable p50/p99/max from marker
#            rows, S3 requests and stored bytes per hour, the streamer's CPU and peak RSS
#
#   bench/pitr.sh [--scale 20] [--wal-mib 2048] [--seconds 60] [--segments 64] [--phases …]
#                 [--bin target/release] [--keep]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
scale=20 wal_mib=2048 seconds=60 segments=64 bin="$root/target/release" keep=0
phases=base,incr,wal,restore,archive,keepup,s3,stream
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale="$2"; shift 2 ;;
    --wal-mib) wal_mib="$2"; shift 2 ;;
    --seconds) seconds="$2"; shift 2 ;;
    --segments) segments="$2"; shift 2 ;;
    --phases) phases="$2"; shift 2 ;;
    --bin) bin="$(realpath "$2")"; shift 2 ;;
    --keep) keep=1; shift ;;
    *) sed -n '2,29p' "$0"; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "run as root (the cluster runs as postgres)" >&2; exit 2; }
need=()
command -v pgbackrest >/dev/null || need+=(pgbackrest)
command -v socat >/dev/null || need+=(socat)
command -v bc >/dev/null || need+=(bc)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
for b in lifeboat-backup lifeboat-restore; do
  [ -x "$bin/$b" ] || (cd "$root" && cargo build --release -q --locked -p backup-cli -p restore-cli)
done
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
pgver=$(basename "$(dirname "$pgbin")")
work=$(mktemp -d /var/tmp/lifeboat-pitr-bench.XXXXXX)
chmod 755 "$work"
mkdir -p "$work/bin" "$work/log"
cp "$bin/lifeboat-backup" "$bin/lifeboat-restore" "$work/bin/"
results="$work/results.md"
cleanup() {
  for d in "$work"/pg "$work"/r-*/data; do
    [ -f "$d/postmaster.pid" ] && runuser -u postgres -- "$pgbin/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
  done
  [ -n "${s3pid:-}" ] && kill "$s3pid" "${tlspid:-}" 2>/dev/null || true
  if [ "$keep" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
has() { [[ ",$phases," == *",$1,"* ]]; }
as_pg() { runuser -u postgres -- "$@"; }
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l | xargs printf '%.2f'; }
# Whole-machine busy CPU seconds (user+nice+system+irq+softirq+steal) from /proc/stat.
busy() { awk '/^cpu /{print ($2+$3+$4+$7+$8+$9)/100}' /proc/stat; }
out() { echo "$*" | tee -a "$results"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
bytes() { du -sb "$1" 2>/dev/null | cut -f1; }
mib() { echo "$1 / 1048576" | bc -l | xargs printf '%.1f'; }

# --- the cluster, archiving through a dispatcher that the phases switch ---------------------
port=$(free_port)
echo "wal push bench secret" > "$work/pw"
cat > "$work/lifeboat.toml" <<EOF
[repository]
url = "$work/lb-repo"
password_file = "$work/pw"
EOF
lb() { as_pg env LIFEBOAT_CACHE_DIR="$work/lb-cache" "$work/bin/lifeboat-backup" --config "$work/lifeboat.toml" "$@"; }
lr() { as_pg env LIFEBOAT_CACHE_DIR="$work/lr-cache" "$work/bin/lifeboat-restore" --config "$work/lifeboat.toml" "$@"; }
pgbr_conf() { # NAME REPO-LINES [EXTRA]
  cat > "$work/$1.conf" <<EOF
[global]
$2
log-level-console=warn
log-level-file=off
lock-path=$work/pgbr-lock-$1
spool-path=$work/pgbr-spool-$1
start-fast=y
beta=y
${3:-}

[bench]
pg1-path=$work/pg
pg1-port=$port
pg1-socket-path=$work
EOF
}
pgbr_conf pgbr "repo1-path=$work/pgbr-repo
repo1-retention-full=10
repo2-path=$work/pgbr-block
repo2-bundle=y
repo2-block=y
repo2-retention-full=10"
pgbr_conf pgbr-async "repo1-path=$work/pgbr-repo
repo1-retention-full=10
repo2-path=$work/pgbr-block
repo2-bundle=y
repo2-block=y
repo2-retention-full=10" "archive-async=y
process-max=2"
# (pgBackRest insists that archive_command mentions it: hence the name.)
cat > "$work/pgbackrest-or-lifeboat.sh" <<EOF
#!/bin/sh
# archive_command: the tool(s) named in $work/mode archive %p.
case "\$(cat $work/mode)" in
  lifeboat) exec env LIFEBOAT_CACHE_DIR=$work/lb-cache $work/bin/lifeboat-backup --config $work/lifeboat.toml --quiet wal push "\$1" ;;
  pgbackrest) exec pgbackrest --config=$work/pgbr.conf --stanza=bench archive-push "\$1" ;;
  pgbackrest-async) exec pgbackrest --config=$work/pgbr-async.conf --stanza=bench archive-push "\$1" ;;
  lifeboat-s3) exec env LIFEBOAT_CACHE_DIR=$work/stream-cache $work/bin/lifeboat-backup --config $work/stream.toml --quiet wal push "\$1" ;;
  discard) exit 0 ;;  # the stream phase: WAL reaches the repository through wal stream
  both) env LIFEBOAT_CACHE_DIR=$work/lb-cache $work/bin/lifeboat-backup --config $work/lifeboat.toml --quiet wal push "\$1" && exec pgbackrest --config=$work/pgbr.conf --stanza=bench archive-push "\$1" ;;
esac
exit 1
EOF
chmod 755 "$work/pgbackrest-or-lifeboat.sh"
echo both > "$work/mode"
chown -R postgres "$work"
as_pg "$pgbin/initdb" -D "$work/pg" -A trust -U postgres >/dev/null
cat >> "$work/pg/postgresql.auto.conf" <<EOF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$work'
shared_buffers = 256MB
archive_mode = on
archive_command = '$work/pgbackrest-or-lifeboat.sh %p'
EOF
as_pg "$pgbin/pg_ctl" -D "$work/pg" -l "$work/log/pg.log" -w start >/dev/null
psql_() { as_pg psql -X -q -A -t -h "$work" -p "$port" -U postgres -d postgres "$@"; }
url="postgresql://postgres@127.0.0.1:$port/postgres"
lb init >/dev/null
as_pg pgbackrest --config="$work/pgbr.conf" --stanza=bench stanza-create >/dev/null
wait_archived() { # until everything written so far is archived by the current mode
  local seg; seg=$(psql_ -c "SELECT pg_walfile_name(pg_switch_wal())")
  for _ in $(seq 1 1200); do
    [ "$(psql_ -c "SELECT coalesce(last_archived_wal >= '$seg', false) FROM pg_stat_archiver")" = t ] && return 0
    sleep 0.5
  done
  echo "segment $seg not archived after 10 min" >&2; return 1
}
pgbench_() { as_pg "$pgbin/pgbench" -h "$work" -p "$port" -U postgres "$@" postgres; }
lb_data_bytes() { echo $(( $(bytes "$work/lb-repo") - $(bytes "$work/lb-repo/wal") )); }

out "# bench/pitr.sh, $(date -u '+%Y-%m-%d %H:%M UTC'), PostgreSQL $pgver, $(pgbackrest version), $(nproc) cores"
out ""
echo "loading: pgbench scale $scale plus a table of random text" >&2
pgbench_ -i -s "$scale" -q >/dev/null 2>&1
# pgbench's own rows are blank-padded (~84:1): a table of hex text keeps compression honest.
psql_ -c "CREATE TABLE docs AS SELECT g AS id, md5(random()::text) || md5(random()::text) || md5(random()::text) AS body FROM generate_series(1, $((scale * 50000))) g"
# Steady state, as a database that has run a while: hint bits set and pages frozen, so that
# what the next base backups store is what the workload changed, not what a first read or
# autovacuum pass would have rewritten anyway.
psql_ -c "VACUUM (FREEZE, ANALYZE)" -c "CHECKPOINT"
dbsize=$(psql_ -c "SELECT pg_database_size('postgres')")
out "cluster: $(mib "$dbsize") MiB (pgbench scale $scale + $((scale * 50000)) rows of random hex text)"
out ""

# One table row per tool for a base backup of TYPE (full or incr): lifeboat's run --pg-base
# and pgBackRest on its file-level (repo 1) and block incremental (repo 2) repositories.
backup_rows() {
  local type=$1 b0 t0 t1 r name dir
  out "| tool | seconds | stored MiB |"
  out "|---|---|---|"
  b0=$(lb_data_bytes); t0=$(now)
  lb run --pg-base "pg=$url" >/dev/null
  t1=$(now); out "| lifeboat run --pg-base | $(secs "$t0" "$t1") | $(mib $(( $(lb_data_bytes) - b0 ))) |"
  for r in 1 2; do
    name=$([ $r = 1 ] && echo "file-level" || echo "block incremental, bundles")
    dir=$([ $r = 1 ] && echo pgbr-repo || echo pgbr-block)
    b0=$(bytes "$work/$dir/backup"); t0=$(now)
    as_pg pgbackrest --config="$work/pgbr.conf" --stanza=bench --repo=$r backup --type="$type" >/dev/null
    t1=$(now); out "| pgBackRest $type ($name, gz) | $(secs "$t0" "$t1") | $(mib $(( $(bytes "$work/$dir/backup") - b0 ))) |"
  done
  out ""
}

if has base; then
  out "## Base backup"
  out ""
  backup_rows full
fi

if has incr; then
  out "## Next base backup after ~1 % of rows updated at random"
  out ""
  rows=$(psql_ -c "WITH u AS (UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE random() < 0.01 RETURNING 1) SELECT count(*) FROM u")
  psql_ -c "CHECKPOINT"
  out "$rows of $((scale * 100000)) pgbench_accounts rows updated."
  out ""
  backup_rows incr
fi

generate_wal() { # MIB: pgbench until that much WAL is written and archived (by both)
  local start_lsn done_bytes
  start_lsn=$(psql_ -c "SELECT pg_current_wal_lsn()")
  while :; do
    pgbench_ -c 2 -j 2 -T 20 -n >/dev/null 2>&1
    done_bytes=$(psql_ -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$start_lsn')::bigint")
    [ "$done_bytes" -ge $(($1 * 1048576)) ] && break
  done
  psql_ -c "CREATE TABLE IF NOT EXISTS the_end AS SELECT 1 AS marker"
  wait_archived
  echo "$done_bytes"
}

if has wal || has restore; then
  echo "generating ≥ $wal_mib MiB of WAL (both tools archiving)" >&2
  done_bytes=$(generate_wal "$wal_mib")
  out "WAL written after the base backups: $(mib "$done_bytes") MiB (pgbench -c 2, archived by both)."
  out ""
fi

if has restore; then
  accounts=$(psql_ -c "SELECT sum(abalance) FROM pgbench_accounts")
  as_pg "$pgbin/pg_ctl" -D "$work/pg" -m fast -w stop >/dev/null
  out "## Restore to the end of the archive"
  out ""
  out "| tool | restore s | replay s | total s (to accepting connections + sync) | peak RSS MiB |"
  out "|---|---|---|---|---|"
  sync; echo 3 > /proc/sys/vm/drop_caches
  rport=$(free_port)
  t0=$(now)
  as_pg /usr/bin/time -f %M -o "$work/log/rss-pitr" env LIFEBOAT_CACHE_DIR="$work/lr-cache" \
    "$work/bin/lifeboat-restore" --config "$work/lifeboat.toml" --json pitr pg --to-pgdata "$work/r-lb/data" \
    --start --port "$rport" --socket-dir "$work" > "$work/log/lb-pitr.json"
  sync; t1=$(now)
  replay=$(python3 -c 'import json,sys; print("%.2f" % json.load(open(sys.argv[1]))["recovery"]["seconds"])' "$work/log/lb-pitr.json")
  got=$(as_pg psql -X -A -t -h "$work" -p "$rport" -U postgres -d postgres -c "SELECT sum(abalance) FROM pgbench_accounts")
  [ "$got" = "$accounts" ] || echo "lifeboat restore: sum(abalance) $got, expected $accounts" >&2
  total=$(secs "$t0" "$t1")
  out "| lifeboat pitr --start | $(echo "$total - $replay" | bc -l | xargs printf '%.2f') | $replay | $total | $(( $(cat "$work/log/rss-pitr") / 1024 )) (pitr) |"
  as_pg "$pgbin/pg_ctl" -D "$work/r-lb/data" -m immediate stop >/dev/null
  rm -rf "$work/r-lb"
  for cfg in pgbr pgbr-async; do
    sync; echo 3 > /proc/sys/vm/drop_caches
    d="$work/r-$cfg/data"; mkdir -p "$d"; chown -R postgres "$work/r-$cfg"; chmod 700 "$d"
    t0=$(now)
    as_pg pgbackrest --config="$work/$cfg.conf" --stanza=bench --repo=1 --pg1-path="$d" restore >/dev/null
    t1=$(now)
    as_pg "$pgbin/pg_ctl" -D "$d" -l "$work/log/$cfg-restore.log" -o "-p $rport -k $work -c archive_mode=off" -W start >/dev/null
    until grep -q "database system is ready to accept connections" "$work/log/$cfg-restore.log"; do
      grep -q "FATAL" "$work/log/$cfg-restore.log" && { tail "$work/log/$cfg-restore.log" >&2; break; }
      sleep 0.1
    done
    sync; t2=$(now)
    got=$(as_pg psql -X -A -t -h "$work" -p "$rport" -U postgres -d postgres -c "SELECT sum(abalance) FROM pgbench_accounts")
    [ "$got" = "$accounts" ] || echo "$cfg restore: sum(abalance) $got, expected $accounts" >&2
    name=$([ $cfg = pgbr ] && echo "pgBackRest restore + archive-get" || echo "pgBackRest restore + archive-get (async, process-max 2)")
    out "| $name | $(secs "$t0" "$t1") | $(secs "$t1" "$t2") | $(secs "$t0" "$t2") | |"
    as_pg "$pgbin/pg_ctl" -D "$d" -m immediate stop >/dev/null
    rm -rf "$work/r-$cfg"
  done
  # The floor: PostgreSQL replaying the same WAL already in pg_wal (no restore_command work).
  d="$work/r-floor/data"
  lr pitr pg --to-pgdata "$d" --restore-command false >/dev/null
  st=$(lb --json wal status)
  for n in $(echo "$st" | python3 -c '
import json,sys
tl=json.load(sys.stdin)["clusters"][0]["timelines"][0]
a=int(tl["oldest"][8:16],16)*256+int(tl["oldest"][16:],16); b=int(tl["newest"][8:16],16)*256+int(tl["newest"][16:],16)
print("\n".join("%08X%08X%08X" % (1, n//256, n%256) for n in range(a, b+1)))'); do
    lr wal fetch --prefetch 0 "$n" "$d/pg_wal/$n" >/dev/null
  done
  sync; echo 3 > /proc/sys/vm/drop_caches
  t1=$(now)
  as_pg "$pgbin/pg_ctl" -D "$d" -l "$work/log/floor.log" -o "-p $rport -k $work -c lc_messages=C" -W start >/dev/null
  until grep -q "database system is ready to accept connections" "$work/log/floor.log"; do sleep 0.1; done
  sync; t2=$(now)
  out "| floor: PostgreSQL replaying the WAL from pg_wal | | $(secs "$t1" "$t2") | | |"
  as_pg "$pgbin/pg_ctl" -D "$d" -m immediate stop >/dev/null
  rm -rf "$work/r-floor"
  out ""
  as_pg "$pgbin/pg_ctl" -D "$work/pg" -l "$work/log/pg.log" -w start >/dev/null
fi

# N real segments of this cluster, ready to be archived again into fresh repositories.
stage_segments() {
  local dir="$1"
  has wal || has restore || generate_wal $((segments * 16 + 32)) >/dev/null
  mkdir -p "$dir/pg_wal/archive_status"
  chown -R postgres "$dir"
  local names
  names=$(lb --json wal status | python3 -c '
import json,sys
st=json.load(sys.stdin); tl=st["clusters"][0]["timelines"][0]
first=int(tl["newest"][8:16],16)*256+int(tl["newest"][16:],16)-int(sys.argv[1])
print("\n".join("%08X%08X%08X" % (1, (first+i)//256, (first+i)%256) for i in range(int(sys.argv[1]))))' "$segments")
  for n in $names; do
    lr wal fetch --prefetch 0 "$n" "$dir/pg_wal/$n" >/dev/null
    touch "$dir/pg_wal/archive_status/$n.ready"
  done
  chown -R postgres "$dir"
}

if has archive; then
  out "## One archive_command call per segment ($segments real segments, local repositories)"
  out ""
  out "| tool | seconds | segments/s | CPU s per segment | peak RSS MiB |"
  out "|---|---|---|---|---|"
  stage_segments "$work/stage"
  run_archive() { # NAME then the command, @SEG@ replaced by each segment
    local name="$1"; shift
    local d="$work/arch"; rm -rf "$d"; cp -a "$work/stage" "$d"
    # A data directory as archive_command sees it (pgBackRest reads its pg_control and wants
    # the segments under it).
    mkdir -p "$d/global"; cp "$work/pg/global/pg_control" "$d/global/"; chown -R postgres "$d"
    local b0 t0 b1 t1; b0=$(busy); t0=$(now)
    : > "$work/log/rss"; chown postgres "$work/log/rss"
    for f in $(ls "$d/pg_wal" | grep -v archive_status | sort); do
      as_pg /usr/bin/time -a -f %M -o "$work/log/rss" "${@//@SEG@/$d/pg_wal/$f}" >/dev/null || { echo "$name failed on $f" >&2; return 1; }
      mv "$d/pg_wal/archive_status/$f.ready" "$d/pg_wal/archive_status/$f.done"
    done
    sync; t1=$(now); b1=$(busy)
    local s; s=$(secs "$t0" "$t1")
    out "| $name | $s | $(echo "$segments / $s" | bc -l | xargs printf '%.1f') | $(echo "($b1 - $b0) / $segments" | bc -l | xargs printf '%.3f') | $(( $(sort -n "$work/log/rss" | tail -1) / 1024 )) |"
  }
  cat > "$work/micro.toml" <<EOF
[repository]
url = "$work/micro-repo"
password_file = "$work/pw"
EOF
  chown postgres "$work/micro.toml"
  mb() { as_pg env LIFEBOAT_CACHE_DIR="$work/micro-cache" "$work/bin/lifeboat-backup" --config "$work/micro.toml" "$@"; }
  for la in 8 0; do
    rm -rf "$work/micro-repo" "$work/micro-cache"; mb init >/dev/null
    run_archive "lifeboat wal push --lookahead $la" env LIFEBOAT_CACHE_DIR="$work/micro-cache" "$work/bin/lifeboat-backup" --config "$work/micro.toml" --quiet wal push --lookahead "$la" @SEG@
  done
  for cfg in pgbr pgbr-async; do
    pgbr_conf "micro-$cfg" "repo1-path=$work/micro-pgbr-$cfg" "$([ $cfg = pgbr-async ] && printf 'archive-async=y\nprocess-max=2')"
    chown postgres "$work/micro-$cfg.conf"
    as_pg pgbackrest --config="$work/micro-$cfg.conf" --stanza=bench stanza-create >/dev/null
    run_archive "pgBackRest archive-push$([ $cfg = pgbr-async ] && echo ' (async, process-max 2)')" pgbackrest --config="$work/micro-$cfg.conf" --stanza=bench --pg1-path="$work/arch" archive-push @SEG@
  done
  t0=$(now); b0=$(busy)
  for f in $(ls "$work/stage/pg_wal" | grep -v archive_status); do cp "$work/stage/pg_wal/$f" "$work/floor-$f" && sync; done
  t1=$(now); b1=$(busy); s=$(secs "$t0" "$t1")
  out "| floor: cp + sync per segment | $s | $(echo "$segments / $s" | bc -l | xargs printf '%.1f') | $(echo "($b1 - $b0) / $segments" | bc -l | xargs printf '%.3f') | |"
  rm -f "$work"/floor-*
  out ""
fi

if has keepup; then
  psql_ -c "ALTER SYSTEM SET archive_timeout = 60" -c "SELECT pg_reload_conf()" >/dev/null
  psql_ -c "CREATE TABLE IF NOT EXISTS marks (at timestamptz, lsn pg_lsn)" -c "CREATE TABLE IF NOT EXISTS bulk (n int, body text)"
  # The second load writes WAL as fast as these cores can (~150 rows of 128 bytes per
  # transaction), to see which archiver falls behind.
  echo "INSERT INTO bulk SELECT g, repeat(md5(random()::text), 4) FROM generate_series(1, 150) g;" > "$work/bulk.sql"
  chown postgres "$work/bulk.sql"
  sysid=$(psql_ -c "SELECT system_identifier FROM pg_control_system()")
  for load in tpcb bulk; do
    out "## Keeping up with pgbench at full speed for ${seconds}s, $load load (archive_timeout 60)"
    out ""
    out "| archive_command | TPS | WAL MiB/s | backlog max / at end (segments) | drained after s | commit → archived p50 / p99 s |"
    out "|---|---|---|---|---|---|"
    for mode in lifeboat pgbackrest pgbackrest-async; do
      echo "$mode" > "$work/mode"
      wait_archived
      # Every run starts after a checkpoint, so each writes the same full-page images.
      psql_ -c "TRUNCATE marks" -c "TRUNCATE bulk" -c "CHECKPOINT"
      lsn0=$(psql_ -c "SELECT pg_current_wal_lsn()")
      : > "$work/backlog-$mode"
      ( while :; do ls "$work/pg/pg_wal/archive_status" | grep -c '\.ready$' >> "$work/backlog-$mode" || true; sleep 1; done ) & sampler=$!
      ( while :; do psql_ -c "INSERT INTO marks SELECT clock_timestamp(), NULL" -c "UPDATE marks SET lsn = pg_current_wal_insert_lsn() WHERE lsn IS NULL" >/dev/null; sleep 0.5; done ) & marker=$!
      script=$([ $load = bulk ] && echo "-f $work/bulk.sql" || echo "")
      # shellcheck disable=SC2086
      tps=$(pgbench_ -c 4 -j 2 -T "$seconds" -n $script 2>/dev/null | awk '/^tps/{printf "%.0f", $3}')
      kill "$marker"; wait "$marker" 2>/dev/null || true
      walmib=$(psql_ -c "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0') / 1048576.0 / $seconds, 1)")
      t0=$(now)
      until [ "$(ls "$work/pg/pg_wal/archive_status" | grep -c '\.ready$' || true)" = 0 ]; do sleep 0.2; done
      t1=$(now)
      kill "$sampler"; wait "$sampler" 2>/dev/null || true
      max=$(sort -n "$work/backlog-$mode" | tail -1); last=$(tail -1 "$work/backlog-$mode")
      wait_archived
      # When each marker's segment became durable: the repository object's mtime.
      psql_ -F' ' -c "SELECT extract(epoch from at), pg_walfile_name(lsn) FROM marks WHERE lsn IS NOT NULL" > "$work/marks-$mode"
      delays=$(while read -r at seg; do
        case $mode in
          lifeboat) f="$work/lb-repo/wal/$sysid/00000001/$seg" ;;
          *) f=$(ls "$work"/pgbr-repo/archive/bench/*/"${seg:0:16}"/"$seg"-* 2>/dev/null | head -1) ;;
        esac
        [ -n "$f" ] && [ -e "$f" ] && echo "$(stat -c %.6Y "$f") - $at" | bc -l
      done < "$work/marks-$mode" | sort -n)
      n=$(echo "$delays" | grep -c . || true)
      p50=$(echo "$delays" | sed -n "$(( (n + 1) / 2 ))p" | xargs printf '%.1f')
      p99=$(echo "$delays" | sed -n "$(( (n * 99 + 99) / 100 ))p" | xargs printf '%.1f')
      out "| $mode | $tps | $walmib | $max / $last | $(secs "$t0" "$t1") | $p50 / $p99 ($n markers) |"
    done
    out ""
  done
  echo both > "$work/mode"
fi

# ministack on loopback (and a TLS front for pgBackRest), once, with the bucket `bench`.
s3_up() {
  [ -n "${s3pid:-}" ] && return 0
  venv="$root/.ci/venv"
  [ -x "$venv/bin/ministack" ] || (cd "$root" && cargo test -q -p backup-core --test s3 s3_store_passes >/dev/null 2>&1) || true
  s3port=$(free_port); tlsport=$(free_port)
  GATEWAY_PORT=$s3port BIND_HOST=127.0.0.1 SERVICES=s3 LOG_LEVEL=DEBUG "$venv/bin/ministack" > "$work/log/ministack.log" 2>&1 & s3pid=$!
  until python3 -c "import socket; socket.create_connection(('127.0.0.1', $s3port))" 2>/dev/null; do sleep 0.2; done
  s3py "c.create_bucket(Bucket='bench')"
  openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout "$work/tls.key" -out "$work/tls.crt" -days 1 2>/dev/null
  cat "$work/tls.key" "$work/tls.crt" > "$work/tls.pem"
  socat "OPENSSL-LISTEN:$tlsport,reuseaddr,fork,cert=$work/tls.pem,verify=0" "TCP:127.0.0.1:$s3port" 2>/dev/null & tlspid=$!
  echo test > "$work/s3-secret"; chown postgres "$work/s3-secret"
}
# Runs Python with `c`, a client of the ministack instance.
s3py() {
  "$venv/bin/python" -c "
import botocore.session
c = botocore.session.get_session().create_client('s3', endpoint_url='http://127.0.0.1:$s3port', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test')
$1"
}
# Bytes stored under PREFIX in the bucket.
s3_bytes() { s3py "print(sum(o['Size'] for p in c.get_paginator('list_objects_v2').paginate(Bucket='bench', Prefix='$1') for o in p.get('Contents', [])))"; }
# A lifeboat config FILE for the repository s3://bench/PREFIX.
s3_config() {
  cat > "$work/$1" <<EOF
[repository]
url = "s3://bench/$2"
password_file = "$work/pw"
[repository.s3]
endpoint = "http://127.0.0.1:$s3port"
path_style = true
access_key_id = "test"
secret_access_key_file = "$work/s3-secret"
EOF
  chown postgres "$work/$1"
}
# S3 requests ministack logged after line $1, and "METHOD count, ...".
s3_requests() { tail -n +"$(($1 + 1))" "$work/log/ministack.log" | grep -c -- "-> service=s3" || true; }
s3_methods() {
  local m; m=$(tail -n +"$(($1 + 1))" "$work/log/ministack.log" | grep -o '[A-Z]* /[^ ]* -> service=s3' | awk '{print $1}' | sort | uniq -c | awk '{printf "%s %s, ", $2, $1}')
  echo "${m%, }"
}

if has s3; then
  out "## S3 requests per GiB of WAL ($segments segments pushed into ministack)"
  out ""
  [ -d "$work/stage" ] || stage_segments "$work/stage"
  s3_up
  s3_config s3.toml lifeboat
  per_gib() { echo "$1 * 1073741824 / ($segments * 16777216)" | bc -l | xargs printf '%.0f'; }
  out "| tool | requests | per GiB | by method |"
  out "|---|---|---|---|"
  as_pg env LIFEBOAT_CACHE_DIR="$work/s3-cache" "$work/bin/lifeboat-backup" --config "$work/s3.toml" init >/dev/null
  r0=$(wc -l < "$work/log/ministack.log")
  d="$work/s3arch"; rm -rf "$d"; cp -a "$work/stage" "$d"
  for f in $(ls "$d/pg_wal" | grep -v archive_status | sort); do
    as_pg env LIFEBOAT_CACHE_DIR="$work/s3-cache" "$work/bin/lifeboat-backup" --config "$work/s3.toml" --quiet wal push "$d/pg_wal/$f"
    mv "$d/pg_wal/archive_status/$f.ready" "$d/pg_wal/archive_status/$f.done"
  done
  n=$(s3_requests "$r0")
  out "| lifeboat wal push | $n | $(per_gib "$n") | $(s3_methods "$r0") |"
  pgbr_conf s3 "repo1-type=s3
repo1-path=/pgbackrest
repo1-s3-bucket=bench
repo1-s3-endpoint=127.0.0.1
repo1-storage-port=$tlsport
repo1-storage-verify-tls=n
repo1-s3-uri-style=path
repo1-s3-region=us-east-1
repo1-s3-key=test
repo1-s3-key-secret=test"
  chown postgres "$work/s3.conf"
  as_pg pgbackrest --config="$work/s3.conf" --stanza=bench stanza-create >/dev/null
  r0=$(wc -l < "$work/log/ministack.log")
  d="$work/s3arch"; rm -rf "$d"; cp -a "$work/stage" "$d"
  for f in $(ls "$d/pg_wal" | grep -v archive_status | sort); do
    as_pg pgbackrest --config="$work/s3.conf" --stanza=bench archive-push "$d/pg_wal/$f"
    mv "$d/pg_wal/archive_status/$f.ready" "$d/pg_wal/archive_status/$f.done"
  done
  n=$(s3_requests "$r0")
  out "| pgBackRest archive-push | $n | $(per_gib "$n") | $(s3_methods "$r0") |"
  out ""
fi

if has stream; then
  s3_up
  s3_config stream.toml stream
  as_pg env LIFEBOAT_CACHE_DIR="$work/stream-cache" "$work/bin/lifeboat-backup" --config "$work/stream.toml" init >/dev/null
  psql_ -c "ALTER SYSTEM SET archive_timeout = 60" -c "SELECT pg_reload_conf()" >/dev/null
  psql_ -c "CREATE TABLE IF NOT EXISTS marks (at timestamptz, lsn pg_lsn)" >/dev/null
  # commit -> durable per marker, from "epoch lsn" marks and "epoch durable-lsn" samples.
  cat > "$work/rpo.py" <<'EOF'
import sys
def lsn(s):
    hi, lo = s.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)
marks = [(float(a), lsn(b)) for a, b in (l.split() for l in open(sys.argv[1]) if l.strip())]
samples = [(float(a), int(b)) for a, b in (l.split() for l in open(sys.argv[2]) if len(l.split()) == 2)]
d = sorted(next((t - at for t, durable in samples if t >= at and durable >= m), float("inf")) for at, m in marks)
q = lambda p: d[min(len(d) - 1, int(p * len(d)))]
print(f"{q(0.5):.1f} / {q(0.99):.1f} / {d[-1]:.1f} ({len(d)} markers)")
EOF
  # The durable position every 0.2 s: the streamer's status file; for archive_command, the
  # end of the last archived segment (16 MiB segments).
  sample_stream() { while :; do echo "$(now) $(grep -o '"durable_lsn": [0-9]*' "$work/stream-status.json" 2>/dev/null | grep -o '[0-9]*$')"; sleep 0.2; done; }
  sample_archive() { while :; do echo "$(now) $(psql_ -c "SELECT coalesce((('x' || substr(last_archived_wal, 9, 8))::bit(32)::bigint * 4294967296 + (('x' || substr(last_archived_wal, 17, 8))::bit(32)::bigint + 1) * 16777216)::text, '0') FROM pg_stat_archiver")"; sleep 0.2; done; }
  out "## WAL streaming: commit to durable in S3 (ministack), pgbench for ${seconds}s"
  out ""
  out "Markers committed every 0.5 s during the load, and the time until the WAL holding each commit was durable in the repository; S3 requests and stored bytes (from the load's start until its last WAL is durable) per hour of load; CPU seconds per minute and peak RSS of the streamer."
  out ""
  out "| load | WAL into the repository by | TPS | WAL MiB/s | commit to durable p50 / p99 / max s | S3 requests per hour (by method) | stored MiB per hour | streamer CPU s per min | streamer peak RSS MiB |"
  out "|---|---|---|---|---|---|---|---|---|"
  for load in full light; do
    rate=$([ $load = light ] && echo "-R 20" || echo "")
    for mode in stream archive; do
      psql_ -c "TRUNCATE marks" -c "CHECKPOINT" >/dev/null
      if [ $mode = stream ]; then
        echo discard > "$work/mode"
        rm -f "$work/stream-status.json"
        as_pg env LIFEBOAT_CACHE_DIR="$work/stream-cache" "$work/bin/lifeboat-backup" --config "$work/stream.toml" --quiet \
          wal stream --url "host=$work port=$port user=postgres" --slot bench --status-file "$work/stream-status.json" 2> "$work/log/stream.log" &
        until grep -q '"connected": true' "$work/stream-status.json" 2>/dev/null; do sleep 0.2; done
        spid=$(pgrep -u postgres -f 'wal stream --url' | head -1)
        cpu0=$(awk '{print $14 + $15}' "/proc/$spid/stat")
        sample_stream > "$work/samples" & sampler=$!
      else
        echo lifeboat-s3 > "$work/mode"
        sample_archive > "$work/samples" & sampler=$!
      fi
      r0=$(wc -l < "$work/log/ministack.log")
      b0=$(s3_bytes stream/wal/)
      t0=$(now)
      ( while :; do psql_ -c "INSERT INTO marks SELECT clock_timestamp(), NULL" -c "UPDATE marks SET lsn = pg_current_wal_insert_lsn() WHERE lsn IS NULL" >/dev/null; sleep 0.5; done ) & marker=$!
      lsn0=$(psql_ -c "SELECT pg_current_wal_lsn()")
      # shellcheck disable=SC2086
      tps=$(pgbench_ -c 4 -j 2 -T "$seconds" -n $rate 2>/dev/null | awk '/^tps/{printf "%.0f", $3}')
      kill "$marker"; wait "$marker" 2>/dev/null || true
      walmib=$(psql_ -c "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0') / 1048576.0 / $seconds, 1)")
      # No forced switch: archive_command's last markers wait for archive_timeout, as they would.
      sleep "$([ $mode = archive ] && echo 65 || echo 5)"
      t1=$(now)
      kill "$sampler"; wait "$sampler" 2>/dev/null || true
      psql_ -F' ' -c "SELECT extract(epoch from at), lsn FROM marks WHERE lsn IS NOT NULL" > "$work/marks"
      rpo=$(python3 "$work/rpo.py" "$work/marks" "$work/samples")
      n=$(s3_requests "$r0")
      # Per hour of this load (the archive_timeout tail after it belongs to the same WAL).
      hours=$(echo "$seconds / 3600" | bc -l)
      b1=$(s3_bytes stream/wal/)
      cpu="-" rss="-" by="archive_command, archive_timeout 60"
      if [ $mode = stream ]; then
        by="wal stream (2 s pieces)"
        cpu=$(echo "($(awk '{print $14 + $15}' "/proc/$spid/stat") - $cpu0) / 100 / (($t1 - $t0) / 60)" | bc -l | xargs printf '%.1f')
        rss=$(awk '/VmHWM/{printf "%.0f", $2 / 1024}' "/proc/$spid/status")
        kill -TERM "$spid"; while kill -0 "$spid" 2>/dev/null; do sleep 0.2; done
      fi
      out "| $load | $by | $tps | $walmib | $rpo | $(echo "$n / $hours" | bc -l | xargs printf '%.0f') ($(s3_methods "$r0")) | $(mib "$(echo "($b1 - $b0) / $hours" | bc -l | xargs printf '%.0f')") | $cpu | $rss |"
    done
  done
  out ""
  psql_ -c "SELECT pg_drop_replication_slot('bench')" >/dev/null
  echo both > "$work/mode"
fi

echo >&2
cat "$results"
