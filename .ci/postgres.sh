#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 for tests/tuner/autotune/test_postgres.py (Optuna's RDB storage).
#
#   source .ci/postgres.sh      # exports MOESIM_TEST_POSTGRES_URL (what .ci/run does)
#   bash .ci/postgres.sh        # prints the export line
#
# Installs Debian's `postgresql` package with apt-get when no server binaries are found, creates a cluster in
# a temporary folder ($MOESIM_PG_DIR, default /tmp/moesim-pg) owned by the `postgres` user when run as root
# (the server refuses to run as root), trusts local connections, and creates database `moesim_test`.
# Idempotent: a server this script started earlier and still running is reused. Stop it with
#   pg_ctl -D /tmp/moesim-pg/data stop   (as the same user)
# Returns non-zero (without killing a sourcing shell) when the server cannot be started.

_moesim_pg_setup() {
  local dir="${MOESIM_PG_DIR:-/tmp/moesim-pg}"
  local port="${MOESIM_PG_PORT:-55432}"
  local db="moesim_test"
  local bindir="" run_as=()

  # 1. Server binaries: on PATH, in Debian's versioned folder, or installed now.
  _moesim_pg_find() {
    if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
      # The real folder (PATH may hold only symlinks to pg_ctl/initdb, not createdb/pg_isready).
      dirname "$(readlink -f "$(command -v pg_ctl)")"
      return 0
    fi
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
      if [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
    done
    return 1
  }
  bindir="$(_moesim_pg_find)" || bindir=""
  if [ -z "$bindir" ]; then
    if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
      echo "postgres.sh: no PostgreSQL server binaries and cannot apt-get install (not root or no apt)" >&2
      return 1
    fi
    echo "postgres.sh: installing Debian's postgresql package" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null 2>&1 || {
      echo "postgres.sh: apt-get install postgresql failed" >&2
      return 1
    }
    bindir="$(_moesim_pg_find)" || { echo "postgres.sh: installed, but pg_ctl/initdb not found" >&2; return 1; }
  fi

  # 2. Run the server as `postgres` when we are root.
  if [ "$(id -u)" = "0" ]; then
    if ! id postgres >/dev/null 2>&1; then
      useradd --system --home-dir "$dir" --shell /bin/sh postgres >/dev/null 2>&1 || {
        echo "postgres.sh: running as root and cannot create user postgres" >&2
        return 1
      }
    fi
    if command -v runuser >/dev/null 2>&1; then run_as=(runuser -u postgres --); else run_as=(su postgres -s /bin/sh -c); fi
  fi
  _moesim_pg_run() {
    if [ "${#run_as[@]}" -eq 0 ]; then "$@"
    elif [ "${run_as[0]}" = "runuser" ]; then "${run_as[@]}" "$@"
    else "${run_as[@]}" "$(printf '%q ' "$@")"
    fi
  }

  # 3. Reuse a running server of ours; else a fresh cluster.
  if [ -f "$dir/port" ] && [ -f "$dir/data/PG_VERSION" ]; then
    local old_port
    old_port="$(cat "$dir/port")"
    if _moesim_pg_run "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1 \
      && "$bindir/pg_isready" -q -h 127.0.0.1 -p "$old_port" >/dev/null 2>&1; then
      port="$old_port"
      export MOESIM_TEST_POSTGRES_URL="postgresql+psycopg2://postgres@127.0.0.1:${port}/${db}"
      echo "export MOESIM_TEST_POSTGRES_URL=${MOESIM_TEST_POSTGRES_URL}"
      return 0
    fi
    _moesim_pg_run "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
  mkdir -p "$dir" || return 1
  if [ "${#run_as[@]}" -gt 0 ]; then chown postgres "$dir" || return 1; fi
  _moesim_pg_run "$bindir/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 || {
    echo "postgres.sh: initdb failed (see $dir/initdb.log)" >&2
    return 1
  }

  # 4. A free port on loopback (55432 unless taken).
  if command -v python3 >/dev/null 2>&1; then
    port="$(python3 - "$port" <<'EOF'
import socket, sys
want = int(sys.argv[1])
for p in [want] + [0]:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        print(s.getsockname()[1])
        break
    except OSError:
        continue
    finally:
        s.close()
EOF
)"
  fi
  # fsync off: a throwaway test cluster; the socket lives in our folder (not /var/run/postgresql).
  _moesim_pg_run "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=100" \
    start >/dev/null 2>&1 || {
    echo "postgres.sh: server did not start (see $dir/server.log)" >&2
    return 1
  }
  echo "$port" >"$dir/port"
  "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db" >/dev/null 2>&1 || {
    "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d "$db" -c 'select 1' >/dev/null 2>&1 || {
      echo "postgres.sh: cannot create database $db" >&2
      return 1
    }
  }
  export MOESIM_TEST_POSTGRES_URL="postgresql+psycopg2://postgres@127.0.0.1:${port}/${db}"
  echo "export MOESIM_TEST_POSTGRES_URL=${MOESIM_TEST_POSTGRES_URL}"
  return 0
}

_moesim_pg_setup
_moesim_pg_rc=$?
unset -f _moesim_pg_setup _moesim_pg_find _moesim_pg_run
# `return` when sourced, `exit` when run.
return "$_moesim_pg_rc" 2>/dev/null || exit "$_moesim_pg_rc"
