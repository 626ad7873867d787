# shellcheck shell=bash
# Sourced by the measurement scripts: `stamp` prints the provenance every result line carries
# (the date, the commit and the machine), as JSON fields without the braces.
stamp() {
  printf '"date": "%s", "commit": "%s", "machine": "%s, %s cores"' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(git rev-parse --short HEAD)" "$(uname -m)" "$(nproc)"
}
