#!/usr/bin/env bash
# Chromium and its WebDriver for the dashboard's browser tests (tests/dashboard_browser.rs).
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver
