#!/usr/bin/env bash
# Make sure a PostgreSQL server for the tests (and CI) listens on 127.0.0.1, with a role
# that can log in over TCP with a password and create databases. Prints the URL it serves
# (without the password) on stdout; everything else goes to stderr.
#
# Idempotent and quick: when a server already accepts the role's password on the port, it
# does nothing. Otherwise it installs PostgreSQL if its programs are missing (apt-get),
# creates our own throwaway cluster in a data directory (no systemd needed, so it works in
# containers) and starts it with pg_ctl. PostgreSQL refuses to run as root, so as root
# the cluster belongs to, and runs as, the OS user `postgres`; as any other user, it runs
# as that user. If another server (e.g. a distribution's cluster) already holds the port,
# the role is created there through its Unix socket instead, when we are its superuser.
#
# Environment:
#   AUTOQUANT_PG_PORT      TCP port on 127.0.0.1 (default 5432)
#   AUTOQUANT_PG_DATA      data directory of our cluster (default /var/tmp/autoquant-pg)
#   AUTOQUANT_PG_PASSWORD  the role's password (default autoquant; never printed)
#
# Then, e.g.: AUTOQUANT_TEST_POSTGRES=postgresql://autoquant:autoquant@127.0.0.1:5432/postgres
set -euo pipefail

PORT="${AUTOQUANT_PG_PORT:-5432}"
DATA="${AUTOQUANT_PG_DATA:-/var/tmp/autoquant-pg}"
ROLE=autoquant
PASSWORD="${AUTOQUANT_PG_PASSWORD:-autoquant}"
LOG="$DATA.log" # outside the data dir; /var/tmp is writable by the cluster's owner
URL="postgresql://$ROLE@127.0.0.1:$PORT/postgres"

say() { echo "scripts/start_postgres.sh: $*" >&2; }
die() {
    say "FAILED: $*"
    exit 1
}

if ! [[ "$PORT" =~ ^[0-9]+$ ]]; then
    die "AUTOQUANT_PG_PORT=$PORT is not a port number."
fi

# The directory with initdb/pg_ctl/psql. Debian installs them under
# /usr/lib/postgresql/<version>/bin, off PATH; elsewhere (Homebrew, other distros) they
# are usually on PATH.
find_bindir() {
    local d
    for d in $(printf "%s\n" /usr/lib/postgresql/*/bin | sort -V -r); do
        [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/psql" ]] && {
            echo "$d"
            return 0
        }
    done
    if command -v pg_config >/dev/null 2>&1; then
        d="$(pg_config --bindir 2>/dev/null || true)"
        [[ -n "$d" && -x "$d/initdb" && -x "$d/psql" ]] && {
            echo "$d"
            return 0
        }
    fi
    if command -v initdb >/dev/null 2>&1; then
        d="$(dirname "$(readlink -f "$(command -v initdb)")")"
        [[ -x "$d/pg_ctl" && -x "$d/psql" ]] && {
            echo "$d"
            return 0
        }
    fi
    return 1
}

# Run a command as root: directly, or through sudo when that needs no password.
as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 1
    fi
}

# The OS user that owns and runs our cluster, and how to run a command as it. From /
# so that the programs do not complain about an unreadable working directory.
if [[ "$(id -u)" == 0 ]]; then
    PG_OS_USER=postgres
    if command -v runuser >/dev/null 2>&1; then
        as_pg() { (cd / && runuser -u postgres -- "$@"); }
    else
        as_pg() { (cd / && su postgres -s /bin/sh -c "$(printf '%q ' "$@")"); }
    fi
else
    PG_OS_USER="$(id -un)"
    as_pg() { (cd / && "$@"); }
fi

# 0 when the role logs in with its password over TCP and may create databases.
role_works() {
    [[ -n "${BIN:-}" ]] || return 1
    local ok
    ok="$(PGPASSWORD="$PASSWORD" PGCONNECT_TIMEOUT=3 "$BIN/psql" -X -A -t -q -w \
        -h 127.0.0.1 -p "$PORT" -U "$ROLE" -d postgres \
        -c "SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user" 2>/dev/null || true)"
    [[ "$ok" == t ]]
}

# 0 when some server answers on 127.0.0.1:$PORT (whatever it lets us do).
port_answers() {
    local rc=0
    "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -t 2 || rc=$?
    [[ $rc == 0 || $rc == 1 ]] # 1: answering but rejecting connections (starting up)
}

# Create (or repair) the role through the superuser's Unix socket in $1. The password
# goes in on stdin as an SQL literal (quotes doubled), so `ps` never shows it.
ensure_role() {
    local sockdir="$1" literal="${PASSWORD//\'/\'\'}"
    as_pg "$BIN/psql" -X -q -w -v ON_ERROR_STOP=1 \
        -h "$sockdir" -p "$PORT" -U "$PG_OS_USER" -d postgres 2>&1 >/dev/null <<SQL
SET standard_conforming_strings = on;
SELECT 'CREATE ROLE $ROLE LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') \\gexec
ALTER ROLE $ROLE WITH LOGIN CREATEDB PASSWORD '$literal';
SQL
}

# The database conf/storage/postgresql.yaml points at: owned by the role, so Optuna may
# create its tables there (PostgreSQL 15 lets only the owner create in "public").
ensure_db() {
    PGPASSWORD="$PASSWORD" PGCONNECT_TIMEOUT=3 "$BIN/psql" -X -q -w -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$PORT" -U "$ROLE" -d postgres >/dev/null 2>&1 <<SQL
SELECT 'CREATE DATABASE $ROLE OWNER $ROLE' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$ROLE') \\gexec
SQL
}

BIN="$(find_bindir || true)"

# Fast path: already up, with our role (a second run, or a server someone else provides).
if role_works; then
    ensure_db || ensure_db || die "role '$ROLE' cannot create its database '$ROLE'."
    echo "$URL"
    exit 0
fi

# 1. The programs.
if [[ -z "$BIN" ]]; then
    command -v apt-get >/dev/null 2>&1 ||
        die "PostgreSQL is not installed and there is no apt-get; install PostgreSQL >= 12 (initdb, pg_ctl, psql) and rerun."
    say "PostgreSQL not found; installing the Debian package postgresql"
    # No "main" cluster: the package would otherwise create one and, without systemd, may
    # start it on port 5432, where ours belongs.
    if ! { as_root mkdir -p /etc/postgresql-common/createcluster.d &&
        echo "create_main_cluster = false" |
        as_root tee /etc/postgresql-common/createcluster.d/autoquant.conf >/dev/null; }; then
        die "installing PostgreSQL needs root (or password-less sudo)."
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { as_root apt-get install -y -q --no-install-recommends postgresql >&2; }
    # A clean machine may have no package lists yet: update, then retry once.
    apt_install || { as_root apt-get update -q >&2 && apt_install; } ||
        die "apt-get install postgresql failed (see above)."
    BIN="$(find_bindir || true)"
    [[ -n "$BIN" ]] || die "installed postgresql, but initdb/pg_ctl/psql are still not found."
fi
say "using $("$BIN/postgres" --version 2>/dev/null || echo "PostgreSQL in $BIN")"

if [[ "$(id -u)" == 0 ]] && ! id postgres >/dev/null 2>&1; then
    die "there is no OS user 'postgres' to run the server as (PostgreSQL refuses root)."
fi

ours_running() { as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }
# The port our running cluster was started on (line 4 of postmaster.pid).
ours_port() { sed -n 4p "$DATA/postmaster.pid" 2>/dev/null || true; }
owner_of() { stat -c %U "$1" 2>/dev/null || stat -f %Su "$1"; }

if port_answers && ! ours_running; then
    # 2a. Someone else's server holds the port: add our role to it if we are its superuser
    # (Debian's cluster: peer auth for `postgres` on its socket in /var/run/postgresql).
    for sockdir in /var/run/postgresql /tmp; do
        if [[ -S "$sockdir/.s.PGSQL.$PORT" ]] && ensure_role "$sockdir" >/dev/null 2>&1; then
            break
        fi
    done
    role_works || die "another PostgreSQL server already listens on 127.0.0.1:$PORT, and role '$ROLE' cannot log in to it with its password (nor could it be created there). Stop that server or set AUTOQUANT_PG_PORT to a free port."
    say "added role '$ROLE' to the server already on port $PORT"
    echo "$URL"
    exit 0
fi

# 2b. Our own cluster: create it once.
if [[ ! -f "$DATA/PG_VERSION" ]]; then
    say "creating a cluster in $DATA (owner: $PG_OS_USER)"
    if [[ -e "$DATA" && -n "$(ls -A "$DATA" 2>/dev/null)" ]]; then
        die "$DATA exists, is not empty and holds no cluster; remove it or set AUTOQUANT_PG_DATA."
    fi
    mkdir -p "$DATA" || die "cannot create $DATA (set AUTOQUANT_PG_DATA to a writable path)."
    if [[ "$(id -u)" == 0 ]]; then
        chown postgres:postgres "$DATA"
    fi
    chmod 700 "$DATA"
    # Local (socket) logins: the OS user as the superuser; TCP logins: password only.
    as_pg "$BIN/initdb" -D "$DATA" -U "$PG_OS_USER" --encoding=UTF8 --locale=C \
        --auth-local=peer --auth-host=scram-sha-256 >"$LOG.initdb" 2>&1 ||
        die "initdb failed; see $LOG.initdb"
    # A throwaway test cluster: durability is not worth the fsyncs (CREATE DATABASE per test).
    cat >>"$DATA/postgresql.conf" <<'CONF'

# scripts/start_postgres.sh: a throwaway cluster for tests
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 200
CONF
fi
if [[ "$(owner_of "$DATA")" != "$PG_OS_USER" ]]; then
    die "$DATA belongs to $(owner_of "$DATA"), not $PG_OS_USER; run as that user or set AUTOQUANT_PG_DATA."
fi

# 3. Start it: listening on 127.0.0.1 only, its socket in the data dir (no /var/run needed).
opts="-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories='$DATA'"
ours_ready() { "$BIN/pg_isready" -q -h "$DATA" -p "$PORT" -t 2; }
starts=0
for _ in $(seq 40); do
    ours_ready && break
    if ((starts == 3)); then
        break # e.g. the port is taken by something that is not PostgreSQL
    elif ! ours_running; then
        say "starting the cluster in $DATA on 127.0.0.1:$PORT (log: $LOG)"
        starts=$((starts + 1))
        # A failure may be a concurrent start (another run of this script): look again.
        as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -o "$opts" -w -t 60 start >/dev/null 2>&1 ||
            sleep 0.5
    elif [[ "$(ours_port)" != "$PORT" ]]; then
        say "restarting the cluster in $DATA on port $PORT (it ran on port $(ours_port))"
        starts=$((starts + 1))
        as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -o "$opts" -w -t 60 restart >/dev/null 2>&1 ||
            sleep 0.5
    else
        sleep 0.5 # starting up, or a killed server still exiting
    fi
done
ours_ready || die "the cluster in $DATA did not come up on port $PORT; last lines of $LOG:
$(tail -n 8 "$LOG" 2>/dev/null)"

# 4. The role.
# A few tries: concurrent runs of this script race on CREATE/ALTER ROLE.
err=""
for _ in 1 2 3; do
    role_works && break
    err="$(ensure_role "$DATA")" || sleep 1
done
role_works || die "the server runs, but role '$ROLE' cannot log in over TCP on 127.0.0.1:$PORT. ${err}"
ensure_db || ensure_db || die "role '$ROLE' cannot create its database '$ROLE'."
echo "$URL"
