#!/bin/bash
# Flotilla bootstrap (flotilla-cloud-init), run once by cloud-init's runcmd. Each step logs a
# "flotilla-bootstrap:" (bake: "flotilla-bake:") line to stdout; a failure's reason also goes
# to $FAILED_FILE. Safe to re-run: each step looks before it acts. A bake with a report URL
# also POSTs how it ended (complete or failed) to the baker, whatever way it ends.
set -Eeuo pipefail

# @flotilla-rendered-values@

case "$FLOTILLA_MODE" in
  host) LOG_PREFIX=flotilla-bootstrap ;;
  *) LOG_PREFIX=flotilla-bake ;;
esac
ENGINE_WAIT_S=60
ENGINE_VERSION=unknown
AGENT_REPLACED=0
TMP_AGENT=
NO_CAPATH=
REPORTED=0

log() { printf '%s: %s\n' "$LOG_PREFIX" "$*"; }
fail() {
  trap - ERR
  log "$*"
  mkdir -p -- "${FAILED_FILE%/*}"
  printf '%s\n' "$*" >"$FAILED_FILE"
  report failed "reason=$*"
  exit 1
}
# bake with a report URL: tells the baker how the bake ended (once), with the tail of the
# cloud-init output, over HTTPS trusting only the bake CA; the nonce says which bake it is.
report() {
  if [ "$FLOTILLA_MODE" != bake ] || [ -z "$FLOTILLA_REPORT_URL" ] || [ "$REPORTED" = 1 ]; then
    return 0
  fi
  REPORTED=1
  local body capath rc=0
  body=$(mktemp) || return 0
  capath=$(mktemp -d) || { rm -f -- "$body"; return 0; }
  {
    printf 'status=%s\n%s\n\n' "$1" "$2"
    tail -n 200 -- "$CLOUD_INIT_OUTPUT" 2>/dev/null || true
  } >"$body"
  curl --fail --silent --show-error --retry 5 --retry-connrefused --retry-delay 2 \
    --connect-timeout 10 --max-time 60 --proto =https \
    --cacert "$FLOTILLA_CA_FILE" --capath "$capath" \
    -H "X-Flotilla-Bake-Nonce: $FLOTILLA_REPORT_NONCE" -H 'Content-Type: text/plain' \
    --data-binary "@$body" -o /dev/null "$FLOTILLA_REPORT_URL" || rc=$?
  rm -f -- "$body"
  rmdir -- "$capath" || true
  if [ "$rc" -eq 0 ]; then
    log "report: $1, sent to the baker"
  else
    log "report: could not reach the baker at $FLOTILLA_REPORT_URL (curl exit $rc)"
  fi
}
trap 'fail "unexpected failure (exit $?) at line $LINENO: $BASH_COMMAND"' ERR
trap 'fail "terminated by a signal"' INT TERM HUP
cleanup() {
  local rc=$?
  if [ -n "$TMP_AGENT" ]; then rm -f -- "$TMP_AGENT"; fi
  if [ -n "$NO_CAPATH" ]; then rmdir -- "$NO_CAPATH" || true; fi
  report failed "reason=the bake script exited (code $rc) before it finished"
}
trap cleanup EXIT
client_version() {
  local v
  v=$(docker --version 2>/dev/null) || v=unknown
  v=${v#Docker version }
  printf '%s\n' "${v%%,*}"
}
sha256_of() {
  local out
  out=$(sha256sum -- "$1")
  printf '%s\n' "${out%% *}"
}

# (1) Docker Engine: present, or installed if the engine mode allows it.
ensure_engine() {
  if command -v docker >/dev/null 2>&1; then
    log "engine: already present (version $(client_version)), installation skipped"
  else
    case "$FLOTILLA_ENGINE" in
      preinstalled)
        fail "engine: docker not found, but Docker Engine is declared preinstalled in this image; refusing to install anything" ;;
      amazon-linux-2023)
        log "engine: docker not found, installing it with dnf"
        dnf install -y docker || fail "engine: dnf install -y docker failed"
        log "engine: installed by dnf (version $(client_version))" ;;
      debian)
        log "engine: docker not found, installing it with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=300 update || fail "engine: apt-get update failed"
        apt-get -o DPkg::Lock::Timeout=300 install -y docker.io || fail "engine: apt-get install -y docker.io failed"
        log "engine: installed by apt-get (version $(client_version))" ;;
    esac
  fi
  if engine_held; then
    # Enabled already in an image with the Engine (the lab's, a baked AMI): `systemctl enable`
    # would run the SysV compatibility script all the same, seconds on a busy host.
    systemctl is-enabled --quiet docker.service || systemctl enable docker.service ||
      fail "engine: could not enable docker.service"
    log "engine: first start held until the agent writes the Engine's TLS listener ($ENGINE_HOLD)"
  elif ! systemctl is-active --quiet docker.service; then
    systemctl enable --now docker.service || fail "engine: docker.service did not start (see journalctl -u docker.service)"
  fi
}
# An Engine held at boot ($ENGINE_HOLD exists) is started by the agent once its TLS listener
# is written: nothing here starts, restarts or waits for it.
engine_held() { [ -e "$ENGINE_HOLD" ]; }

# (2) Insecure registries (lab only), merged into daemon.json: exit 0 changed, 3 unchanged.
merge_registries() {
  mkdir -p -- "${DAEMON_JSON%/*}"
  python3 - "$DAEMON_JSON" "${FLOTILLA_INSECURE_REGISTRIES[@]}" <<'PY'
import json, os, sys
path, regs = sys.argv[1], sys.argv[2:]
cfg = json.load(open(path)) if os.path.exists(path) else None
have = (cfg or {}).get("insecure-registries", [])
if cfg is not None and all(r in have for r in regs): sys.exit(3)
cfg = cfg or {}
cfg["insecure-registries"] = have + [r for r in regs if r not in have]
open(path + ".tmp", "w").write(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
os.replace(path + ".tmp", path)
PY
}
configure_engine() {
  [ "${#FLOTILLA_INSECURE_REGISTRIES[@]}" -gt 0 ] || return 0
  local rc=0 regs="${FLOTILLA_INSECURE_REGISTRIES[*]}"
  merge_registries || rc=$?
  case "$rc" in
    0)
      if engine_held; then
        log "engine: insecure registries $regs written to $DAEMON_JSON, for the Engine's first start"
        return 0
      fi
      log "engine: insecure registries $regs written to $DAEMON_JSON, restarting docker"
      systemctl restart docker.service || fail "engine: docker.service did not restart with the new $DAEMON_JSON" ;;
    3) log "engine: $DAEMON_JSON already lists insecure registries $regs, no restart" ;;
    *) fail "engine: could not update $DAEMON_JSON (exit $rc)" ;;
  esac
}
wait_for_engine() {
  if engine_held; then
    log "engine: not waited for (held; the agent starts it)"
    return 0
  fi
  local deadline=$((SECONDS + ENGINE_WAIT_S))
  until docker info >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "engine: docker info did not answer within ${ENGINE_WAIT_S}s (see journalctl -u docker.service)"
    sleep 1
  done
  ENGINE_VERSION=$(docker info --format '{{.ServerVersion}}') || ENGINE_VERSION=unknown
  log "engine: ready (server version $ENGINE_VERSION)"
}

# (3) The agent binary: kept if its sha256 matches (a baked image), else downloaded trusting
# only the cluster CA (the empty --capath keeps curl off the system CA directory) and checked
# before install.
install_agent() {
  local have
  if [ -f "$AGENT_BIN" ]; then
    have=$(sha256_of "$AGENT_BIN")
    if [ "$have" = "$FLOTILLA_AGENT_SHA256" ]; then
      log "agent: version $FLOTILLA_AGENT_VERSION already installed, download skipped"
      return 0
    fi
    log "agent: $AGENT_BIN is not version $FLOTILLA_AGENT_VERSION (sha256 $have), replacing it"
  fi
  log "agent: downloading version $FLOTILLA_AGENT_VERSION from $FLOTILLA_AGENT_URL"
  mkdir -p -- "${AGENT_BIN%/*}"
  NO_CAPATH=$(mktemp -d)
  TMP_AGENT=$(mktemp "${AGENT_BIN%/*}/.flotilla-agent.XXXXXX")
  local rc=0 got
  curl --fail --silent --show-error --retry 10 --retry-all-errors --retry-delay 2 \
    --connect-timeout 10 --max-time 300 --proto =https \
    --cacert "$FLOTILLA_CA_FILE" --capath "$NO_CAPATH" \
    -o "$TMP_AGENT" "$FLOTILLA_AGENT_URL" || rc=$?
  [ "$rc" -eq 0 ] || fail "agent: download failed (curl exit $rc); refusing to start the agent"
  got=$(sha256_of "$TMP_AGENT")
  if [ "$got" != "$FLOTILLA_AGENT_SHA256" ]; then
    rm -f -- "$TMP_AGENT"
    TMP_AGENT=
    fail "agent binary sha256 mismatch: expected $FLOTILLA_AGENT_SHA256 got $got; refusing to start the agent"
  fi
  chmod 0755 "$TMP_AGENT"
  mv -f -- "$TMP_AGENT" "$AGENT_BIN"
  TMP_AGENT=
  AGENT_REPLACED=1
  log "agent: version $FLOTILLA_AGENT_VERSION installed at $AGENT_BIN"
}

# (4) host: start the agent (restart it if it was running an older binary).
start_agent() {
  local was_active=0
  if systemctl is-active --quiet "$AGENT_UNIT"; then was_active=1; fi
  # `enable` reloads systemd itself (the unit file is new), then `--now` starts the unit.
  systemctl enable --now "$AGENT_UNIT" || fail "agent: $AGENT_UNIT did not start (see journalctl -u $AGENT_UNIT)"
  if [ "$was_active" = 1 ] && [ "$AGENT_REPLACED" = 1 ]; then
    systemctl restart "$AGENT_UNIT" || fail "agent: $AGENT_UNIT did not restart (see journalctl -u $AGENT_UNIT)"
  fi
  log "agent: $AGENT_UNIT enabled and started"
}

# (4) bake with a report URL: start the seal unit (written by the user-data), whose ExecStop
# cleans this builder for capture when the baker stops it (the baker cannot reach into it).
install_seal() {
  [ -n "$FLOTILLA_REPORT_URL" ] || return 0
  systemctl enable --now "$SEAL_UNIT" || fail "could not start $SEAL_UNIT"
  log "seal: $SEAL_UNIT cleans this builder when it is stopped for capture"
}

# (4) bake: agent installed but disabled, Engine enabled, no bake CA or script left behind once
# the marker exists (a reporting bake needs the CA for its report, and removes it after).
finish_bake() {
  systemctl daemon-reload || fail "systemctl daemon-reload failed"
  systemctl disable "$AGENT_UNIT" || fail "could not disable $AGENT_UNIT"
  systemctl enable docker.service || fail "could not enable docker.service"
  install_seal
  [ -n "$FLOTILLA_REPORT_URL" ] || rm -f -- "$FLOTILLA_CA_FILE"
  rm -f -- "${BASH_SOURCE[0]}"
  printf 'agent=%s\nengine=%s\n' "$FLOTILLA_AGENT_VERSION" "$ENGINE_VERSION" >"$BAKE_COMPLETE"
}

rm -f -- "$FAILED_FILE"
install -d -m 0700 -- "$STATE_DIR"
log "starting: mode $FLOTILLA_MODE, engine $FLOTILLA_ENGINE, agent $FLOTILLA_AGENT_VERSION"
ensure_engine
configure_engine
wait_for_engine
install_agent
if [ "$FLOTILLA_MODE" = host ]; then
  start_agent
  log "done"
else
  finish_bake
  log "done agent=$FLOTILLA_AGENT_VERSION engine=$ENGINE_VERSION"
  report complete "engine=$ENGINE_VERSION"
  rm -f -- "$FLOTILLA_CA_FILE"
fi
