#!/usr/bin/env bash
# Installs what the end-to-end tests and the demo need, idempotently:
# Prosody 0.12 + prosody-modules (mod_cloud_notify) + lua-unbound, ejabberd, openssl,
# dnsmasq (the client-mode SRV tests start it on 127.0.0.1 as their DNS server; the
# dnsmasq-base package has the binary without the system service), nginx-light (the
# WNS notify client's test against real nginx, tests/nginx.rs, starts its own), and a
# Python venv with slixmpp (the XMPP client library that drives the test users).
# The packages' own services are kept from starting (they would bind 0.0.0.0).
# Usage: scripts/e2e/setup.sh [--no-ejabberd]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WANT_EJABBERD=1
[ "${1:-}" = "--no-ejabberd" ] && WANT_EJABBERD=0

pkgs=()
command -v prosody >/dev/null 2>&1 || pkgs+=(prosody)
[ -f /usr/lib/prosody/modules/mod_cloud_notify/mod_cloud_notify.lua ] || pkgs+=(prosody-modules)
dpkg-query -W -f='${Status}' lua-unbound 2>/dev/null | grep -q 'ok installed' || pkgs+=(lua-unbound)
command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
[ -x /usr/sbin/dnsmasq ] || pkgs+=(dnsmasq-base)
[ -x /usr/sbin/nginx ] || pkgs+=(nginx-light)
if [ "$WANT_EJABBERD" = 1 ]; then
  command -v ejabberdctl >/dev/null 2>&1 || pkgs+=(ejabberd)
fi
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "== apt-get install ${pkgs[*]}"
  added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; added_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  [ "$added_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  # Belt and braces: if a package's service started anyway, stop it.
  systemctl stop prosody ejabberd nginx >/dev/null 2>&1 || true
fi

VENV="$HERE/.venv"
if ! "$VENV/bin/python" -c 'import slixmpp' >/dev/null 2>&1; then
  echo "== python venv + slixmpp"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'slixmpp==1.17.0'
fi
