#!/usr/bin/env python3
"""Deterministic benchmark datasets for bench/run.sh (stdlib only).

  datasets.py tree DIR [MIB]          mixed directory: source-like text, logs, media, db files
  datasets.py tree-change DIR         change ~2% of the tree's bytes (edits, appends, new files)
  datasets.py pg-events ROWS [SEED]   CSV rows for the `events` table (text + json columns)
  datasets.py redis START COUNT       RESP commands for `redis-cli --pipe`: keys START.. of mixed types
  datasets.py redis-change N PERCENT  RESP commands rewriting PERCENT% of keys 0..N

Text is drawn from a pool of sentences over a 4000-word vocabulary, salted with random tokens,
so it compresses the way real text and JSON do (about 3:1 with zstd -3), not like pgbench's
blank padding (84:1) or random bytes (1:1).
"""
import os
import random
import sys

VOCAB_SEED = 7


def vocabulary(r):
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    weights = [12, 9, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    words = set()
    while len(words) < 4000:
        n = r.choice((2, 3, 4, 4, 5, 5, 6, 7, 8, 9, 11))
        words.add("".join(r.choices(letters, weights, k=n)))
    return sorted(words)


def sentence_pool(r, count=20000):
    words = vocabulary(random.Random(VOCAB_SEED))
    # Zipf-like word frequencies, as in real text.
    cum = [1.0 / (i + 1) for i in range(len(words))]
    pool = []
    for _ in range(count):
        n = r.randint(4, 18)
        pool.append(" ".join(r.choices(words, cum_weights=None, weights=cum, k=n)))
    return pool


def token(r, n=16):
    return r.randbytes(n).hex()


# ---------------------------------------------------------------- directory tree


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def text_blob(r, pool, size):
    parts, n = [], 0
    while n < size:
        s = r.choice(pool)
        if r.random() < 0.2:
            s += " " + token(r, 8)
        line = s + ("\n" if r.random() < 0.3 else ". ")
        parts.append(line)
        n += len(line)
    return "".join(parts).encode()[:size]


def log_blob(r, pool, size, start=0):
    out, n, i = [], 0, start
    levels = ("INFO", "INFO", "INFO", "DEBUG", "WARN", "ERROR")
    while n < size:
        line = '2026-11-%02dT%02d:%02d:%02d.%03dZ %s req=%s path=/api/%s took=%dms msg="%s"\n' % (
            1 + i // 86400000 % 28, i // 3600000 % 24, i // 60000 % 60, i // 1000 % 60, i % 1000,
            r.choice(levels), token(r, 6), r.choice(pool).split(" ")[0], r.randint(1, 900),
            r.choice(pool))
        i += r.randint(1, 400)
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:size]


def tree(root, mib):
    r = random.Random(1)
    pool = sentence_pool(r)
    total = mib << 20
    # Shares of the bytes: 15% small text files, 35% logs, 30% incompressible media,
    # 15% database-like files (repetitive records with random fields), 5% duplicated files.
    small_bytes, log_bytes = total * 15 // 100, total * 35 // 100
    media_bytes, db_bytes = total * 30 // 100, total * 15 // 100
    n = 0
    i = 0
    while n < small_bytes:
        size = int(r.lognormvariate(8.5, 1.2)) + 64  # median ~5 KB
        write(f"{root}/src/mod{i // 200:03d}/file{i:05d}.txt", text_blob(r, pool, size))
        n += size
        i += 1
    for k in range(max(1, log_bytes // (24 << 20))):
        write(f"{root}/logs/app-{k:02d}.log", log_blob(r, pool, 24 << 20, k * 10**9))
    k = 0
    while k * (12 << 20) < media_bytes:
        write(f"{root}/media/asset-{k:03d}.bin", r.randbytes(r.randint(4, 20) << 20))
        k += 1
    for k in range(max(1, db_bytes // (40 << 20))):
        rec = bytearray()
        while len(rec) < 40 << 20:
            rec += b"%08d|%s|%s|%d\n" % (len(rec), token(r, 12).encode(),
                                         r.choice(pool).encode(), r.randint(0, 10**6))
        write(f"{root}/db/table-{k:02d}.dat", bytes(rec[: 40 << 20]))
    dup = total * 5 // 100
    src = sorted(os.listdir(f"{root}/media"))
    k = 0
    while dup > 0 and k < len(src):
        with open(f"{root}/media/{src[k]}", "rb") as f:
            data = f.read()
        write(f"{root}/backup-copies/{src[k]}", data)
        dup -= len(data)
        k += 1


def tree_change(root):
    """Touch ~2% of the bytes the way a day of work does: append to logs, edit some source
    files, rewrite a database file's records in place, add one new media file."""
    r = random.Random(2)
    pool = sentence_pool(random.Random(3), 2000)
    changed = 0
    logs = sorted(os.listdir(f"{root}/logs"))
    for name in logs[:4]:
        data = log_blob(r, pool, 5 << 20, 5 * 10**9)
        with open(f"{root}/logs/{name}", "ab") as f:
            f.write(data)
        changed += len(data)
    files = []
    for d, _, names in os.walk(f"{root}/src"):
        files += [os.path.join(d, n) for n in names]
    files.sort()
    for path in r.sample(files, max(1, len(files) // 50)):
        with open(path, "r+b") as f:
            data = f.read()
            at = r.randrange(len(data))
            new = text_blob(r, pool, 200)
            f.seek(0)
            f.write(data[:at] + new + data[at:])
        changed += len(new)
    db = sorted(os.listdir(f"{root}/db"))[0]
    with open(f"{root}/db/{db}", "r+b") as f:
        for _ in range(20):
            f.seek(r.randrange(40 << 20))
            f.write(token(r, 4096).encode())
            changed += 8192
    new = r.randbytes(10 << 20)
    write(f"{root}/media/asset-new.bin", new)
    changed += len(new)
    print(f"changed {changed / 2**20:.1f} MiB", file=sys.stderr)


# ---------------------------------------------------------------- PostgreSQL rows


def pg_events(rows, seed):
    r = random.Random(seed)
    pool = sentence_pool(r)
    out = sys.stdout
    statuses = ("new", "paid", "paid", "paid", "shipped", "shipped", "refunded", "cancelled")
    buf = []
    for i in range(rows):
        items = ",".join('{"sku":"SKU-%05d","qty":%d,"price":%d.%02d}' % (
            r.randint(0, 20000), r.randint(1, 5), r.randint(1, 400), r.randint(0, 99))
            for _ in range(r.randint(1, 4)))
        payload = ('{"ip":"10.%d.%d.%d","session":"%s","items":[%s],"comment":"%s"}' % (
            r.randint(0, 255), r.randint(0, 255), r.randint(0, 255), token(r, 12), items,
            r.choice(pool))).replace('"', '""')
        buf.append('%d,2026-%02d-%02d %02d:%02d:%02d+00,%d,%s,%d.%02d,"%s","%s"\n' % (
            seed * 10**8 + i, 1 + i * 11 // max(rows, 1), 1 + r.randrange(28), r.randrange(24),
            r.randrange(60), r.randrange(60), r.randint(1, 200000), r.choice(statuses),
            r.randint(1, 2000), r.randint(0, 99), r.choice(pool), payload))
        if len(buf) >= 4096:
            out.write("".join(buf))
            buf.clear()
    out.write("".join(buf))


# ---------------------------------------------------------------- Redis


def resp(*args):
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = b"%d" % a
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)


def redis_prefix(i):
    kind = i % 20
    for bound, prefix in ((8, "session"), (10, "blob"), (14, "user"), (16, "queue"),
                          (18, "board"), (19, "tags")):
        if kind < bound:
            return prefix
    return "stream"


def redis_key(r, pool, i, generation=0):
    """Commands that create key number i; the kind of key depends on i only."""
    kind = i % 20
    if kind < 8:  # session JSON strings
        v = '{"user":%d,"csrf":"%s","cart":"%s","seen":%d,"gen":%d}' % (
            i, token(r), r.choice(pool), r.randint(0, 10**9), generation)
        return [resp("SET", f"session:{i}", v, "EX", 86400 + i % 5000)]
    if kind < 10:  # cached rendered fragments / images: incompressible blobs
        return [resp("SET", f"blob:{i}", r.randbytes(r.randint(2048, 24576)))]
    if kind < 14:  # user hashes
        fields = []
        for f in ("name", "email", "bio", "city", "plan", "token", "last_login", "gen"):
            fields += [f, {"bio": r.choice(pool), "token": token(r), "gen": str(generation)}.get(
                f, r.choice(pool).split(" ")[0] + str(r.randint(0, 999)))]
        return [resp("HSET", f"user:{i}", *fields)]
    if kind < 16:  # job queues
        return [resp("RPUSH", f"queue:{i}", *[r.choice(pool) for _ in range(r.randint(10, 60))])]
    if kind < 18:  # leaderboards
        args = []
        for _ in range(r.randint(20, 120)):
            args += [str(r.randint(0, 10**6)), f"player:{r.randint(0, 10**7)}"]
        return [resp("ZADD", f"board:{i}", *args)]
    if kind < 19:  # tag sets
        return [resp("SADD", f"tags:{i}", *{r.choice(pool).split(" ")[0] for _ in range(30)})]
    cmds = [resp("XADD", f"stream:{i}", "*", "event", r.choice(pool), "id", token(r, 8))
            for _ in range(r.randint(5, 30))]
    return cmds


def redis(start, count):
    r = random.Random(start)
    pool = sentence_pool(r)
    out = sys.stdout.buffer
    buf = []
    for i in range(start, start + count):
        buf += redis_key(r, pool, i)
        if len(buf) >= 2000:
            out.write(b"".join(buf))
            buf.clear()
    out.write(b"".join(buf))


def redis_change(n, percent):
    r = random.Random(99)
    pool = sentence_pool(random.Random(98), 2000)
    out = sys.stdout.buffer
    for i in sorted(r.sample(range(n), int(n * percent / 100))):
        out.write(resp("DEL", f"{redis_prefix(i)}:{i}"))
        for c in redis_key(r, pool, i, generation=1):
            out.write(c)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "tree":
        tree(args[0], int(args[1]) if len(args) > 1 else 1536)
    elif cmd == "tree-change":
        tree_change(args[0])
    elif cmd == "pg-events":
        pg_events(int(args[0]), int(args[1]) if len(args) > 1 else 1)
    elif cmd == "redis":
        redis(int(args[0]), int(args[1]))
    elif cmd == "redis-change":
        redis_change(int(args[0]), float(args[1]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
