#!/usr/bin/env bash
# Installs the Debian packages the tests use, when missing and when we are root; with the
# argument "demo", only what `make demo` uses (Dovecot).
# Dovecot and PostgreSQL are installed without starting a system-wide instance (policy-rc.d
# below): the tests start their own, in temporary folders. PostgreSQL's package still
# creates its "main" cluster, which stays stopped and unused.
set -euo pipefail
packages=(dovecot-core dovecot-pop3d openssl ca-certificates)
if [ "${1:-}" != demo ]; then
  packages+=(openssh-server postgresql)
  [ "${POP3MAIL_BROWSER_TESTS:-1}" = 1 ] && packages+=(chromium chromium-driver)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "Not root: cannot install ${missing[*]}; the tests that need them will be skipped." >&2
  exit 0
fi
echo "Installing ${missing[*]} ..."
created_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
trap '[ $created_policy = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
