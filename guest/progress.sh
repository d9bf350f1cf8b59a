# Progress a person can read, for the long steps of the guest builds
# (sourced by guest/kernel/build.sh and guest/image/build.sh).
#
# progress LABEL DONE TOTAL START_EPOCH [UNIT]
#   rewrites one line: "LABEL 42% (1234/2900 UNIT), 1m05s left"
# progress_done
#   ends that line.
# Shown only on a terminal: stderr when it is one, else /dev/tty when the
# caller (scripts/setup.sh, whose output goes through tee) says its own
# output is a terminal with KATA_TS_PROGRESS=1. KATA_TS_PROGRESS=0 silences
# it. The milestone lines the scripts echo are unchanged either way, so logs
# stay free of carriage returns.
if [ -z "${KATA_TS_PROGRESS:-}" ]; then
  if [ -t 2 ]; then KATA_TS_PROGRESS=1; else KATA_TS_PROGRESS=0; fi
fi
_progress_out=/dev/stderr
if [ "$KATA_TS_PROGRESS" = 1 ] && [ ! -t 2 ]; then
  if { : > /dev/tty; } 2>/dev/null; then _progress_out=/dev/tty; else KATA_TS_PROGRESS=0; fi
fi
_progress_shown=0

progress() {
  [ "$KATA_TS_PROGRESS" = 1 ] || return 0
  local label=$1 done=$2 total=$3 start=$4 unit=${5:-}
  [ "$total" -gt 0 ] 2>/dev/null || return 0
  local pct=$(( done * 100 / total )); [ $pct -gt 99 ] && pct=99
  local now elapsed left=""
  now=$(date +%s); elapsed=$(( now - start ))
  if [ "$done" -gt 0 ] && [ $elapsed -ge 2 ]; then
    local rest=$(( elapsed * (total - done) / done )); [ $rest -lt 0 ] && rest=0
    left=$(printf ', %dm%02ds left' $((rest / 60)) $((rest % 60)))
  fi
  printf '\r\033[K%s %d%% (%s/%s%s)%s' "$label" "$pct" "$done" "$total" "${unit:+ $unit}" "$left" > "$_progress_out"
  _progress_shown=1
}

progress_done() {
  [ "$_progress_shown" = 1 ] && printf '\r\033[K' > "$_progress_out"
  _progress_shown=0
  return 0
}
