# Shared by start.sh and stop.sh (sourced).

# alive PIDFILE: the pid in PIDFILE is a live (not zombie) process whose
# name starts with the daemon's (so a stale pid file never hits a stranger).
alive() {
  local pid name want
  [ -s "$1" ] || return 1
  pid=$(cat "$1")
  want=$(basename "$1" .pid); [ "$want" = mariadb ] && want=mariadbd
  name=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  case "$name" in "$want"*) ;; *) return 1 ;; esac
  [ "$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1)" != Z ]
}
