#!/usr/bin/env bash
# Model-check the token-refresh protocol (docs/model/refresh.pml) with SPIN.
#
#   bash docs/model/check.sh                  every run below; exit 0 only if all are as expected
#   bash docs/model/check.sh correct          only the correct model (N=2 and N=3)
#   bash docs/model/check.sh mutants findings broken variants (each must yield a counterexample)
#   bash docs/model/check.sh no-lock/P1 ...   named runs
#   bash docs/model/check.sh --list           the runs, what they expect
#   bash docs/model/check.sh --trail NAME     the shortest counterexample of a run, as a story
#
# A run is: spin -a (generate the verifier pan.c) -> gcc -> ./pan (exhaustive search). The
# correct model must verify with 0 errors and a complete search; every mutant/finding must
# produce an error, and the error must be a violation of the property it names (mutants are
# built with -DONLY=<n>, so only that property is checked). All work happens in a temporary
# directory that is removed on exit: nothing is written to the repository.
#
# Exit status: 0 all runs as expected, 1 some run not as expected, 2 usage error or missing tool.

set -u -o pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
model="$here/refresh.pml"

# name | group | expected (verified, P1..P7; P4 may be a deadlock) | spin -D flags | gcc flags
# Bounds: N processes, ROUNDS refreshes each, CRASHES SIGKILLs and FAULTS transient failures
# (5xx answers + request timeouts) per run. Mutants run at N=2: they fail within milliseconds.
SMALL="-DN=2 -DROUNDS=3 -DCRASHES=2 -DFAULTS=3"
RUNS=(
  "correct-n2|correct|verified|$SMALL|-O2"
  "correct-n3|correct|verified|-DN=3 -DROUNDS=2 -DCRASHES=2 -DFAULTS=2|-O2 -DCOLLAPSE"
  "no-lock/P1|mutants|P1|$SMALL -DNO_LOCK|-O0"
  "no-lock/P4|mutants|P4|$SMALL -DNO_LOCK|-O0"
  "lock-survives-crash/P4|mutants|P4|$SMALL -DLOCK_SURVIVES_CRASH|-O0"
  "no-gen-recheck/P6|mutants|P6|$SMALL -DNO_GEN_RECHECK|-O0"
  "cached-token/P1|mutants|P1|$SMALL -DCACHED_TOKEN|-O0"
  "gen-before-secret/P3|mutants|P3|$SMALL -DGEN_BEFORE_SECRET|-O0"
  "gen-before-secret/P5|mutants|P5|$SMALL -DGEN_BEFORE_SECRET|-O0"
  "journal-after-send/P3|mutants|P3|$SMALL -DJOURNAL_AFTER_SEND|-O0"
  "signal-aborts/P1|mutants|P1|$SMALL -DSIGNAL_ABORTS|-O0"
  "signal-aborts/P2|mutants|P2|$SMALL -DSIGNAL_ABORTS|-O0"
  "timeout-clears-journal/P3|mutants|P3|$SMALL -DTIMEOUT_CLEARS_JOURNAL|-O0"
  "no-gen-bump/P5|mutants|P5|$SMALL -DNO_GEN_BUMP|-O0"
  "spec-5xx-clears-journal/P3|findings|P3|$SMALL -DSPEC_5XX_CLEARS_JOURNAL|-O0"
  "spec-no-wait/P3|findings|P3|$SMALL -DSPEC_NO_WAIT|-O0"
  "spec-no-wait/P1|findings|P1|$SMALL -DSPEC_NO_WAIT|-O0"
  "blame-names-the-loser/P7|findings|P7|$SMALL -DCHECK_BLAME|-O0"
)

die() { echo "check.sh: $*" >&2; exit 2; }

field() { # field ROW INDEX
  local IFS='|'; local -a f; read -r -a f <<<"$1"; echo "${f[$2]}"
}

need_tools() {
  command -v spin >/dev/null 2>&1 ||
    die "spin (the SPIN model checker) is not installed; on Debian/Ubuntu: apt-get install spin"
  command -v gcc >/dev/null 2>&1 || die "gcc is not installed (SPIN's verifiers are C programs)"
  [ -f "$model" ] || die "model not found: $model"
}

now_ms() { date +%s%3N; }

# Select the runs named by the arguments (names or groups; all runs when there are none) into
# the array SELECTED.
select_runs() {
  SELECTED=()
  if [ $# -eq 0 ]; then SELECTED=("${RUNS[@]}"); return; fi
  local arg row hit
  for arg in "$@"; do
    hit=0
    for row in "${RUNS[@]}"; do
      if [ "$arg" = all ] || [ "$(field "$row" 0)" = "$arg" ] || [ "$(field "$row" 1)" = "$arg" ]; then
        SELECTED+=("$row"); hit=1
      fi
    done
    [ $hit = 1 ] || die "no run or group named '$arg' (see --list)"
  done
}

# Build and run one verification in directory $1; sets OUT (pan's output), RC.
verify() { # verify DIR SPINFLAGS GCCFLAGS PANFLAGS
  local dir=$1 sflags=$2 cflags=$3 pflags=$4
  mkdir -p "$dir" && cp "$model" "$dir/refresh.pml" || return 1
  # shellcheck disable=SC2086
  ( cd "$dir" &&
    spin -a $sflags refresh.pml >spin.log 2>&1 &&
    gcc $cflags -DSAFETY -DMEMLIM=4096 -o pan pan.c >gcc.log 2>&1 &&
    ./pan -m200000 $pflags >pan.log 2>&1 ) || true
  if [ ! -s "$dir/pan.log" ]; then
    OUT="build failed: $(cat "$dir/spin.log" "$dir/gcc.log" 2>/dev/null | head -5)"
    return 1
  fi
  OUT=$(cat "$dir/pan.log")
}

run_one() { # run_one ROW WORKDIR -> prints a table line; returns 0 if as expected
  local row=$1 work=$2
  local name expect sflags cflags pflags=""
  name=$(field "$row" 0); expect=$(field "$row" 2)
  sflags=$(field "$row" 3); cflags=$(field "$row" 4)
  if [ "$expect" != verified ]; then
    sflags="$sflags -DONLY=${expect#P}"
    [ "$expect" = P4 ] || pflags="-E"   # only P4 includes the deadlock (invalid end state) check
  fi
  local t0 t1 secs states errors got result ok=0
  t0=$(now_ms)
  if ! verify "$work/${name//\//_}" "$sflags" "$cflags" "$pflags"; then
    t1=$(now_ms); secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", (b-a)/1000}')
    printf '%-4s %-28s %-9s %12s  %-40s %6s\n' FAIL "$name" "$expect" "-" "${OUT:0:40}" "$secs"
    return 1
  fi
  t1=$(now_ms); secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", (b-a)/1000}')
  states=$(grep -oE '^ *[0-9]+ states, stored' <<<"$OUT" | grep -oE '[0-9]+' | head -1)
  errors=$(grep -oE 'errors: [0-9]+' <<<"$OUT" | grep -oE '[0-9]+' | head -1)
  # which property failed: the tag in the assertion text, or a deadlock (invalid end state)
  got=$(grep -E '^pan:[0-9]+: assertion violated' <<<"$OUT" | grep -oE 'P[0-9]_' | head -1)
  got=${got%_}
  [ -z "$got" ] && grep -qE '^pan:[0-9]+: invalid end state' <<<"$OUT" && got="P4 (deadlock)"
  if [ "$expect" = verified ]; then
    if [ "${errors:-x}" = 0 ] && ! grep -qE 'Search not completed|max search depth too small|MEMLIM|out of memory' <<<"$OUT"; then
      result="verified, 0 errors"; ok=1
    else
      result="NOT verified: ${got:-incomplete search} (errors: ${errors:-?})"
    fi
  else
    if [ "${errors:-0}" -gt 0 ] && [ "${got%% *}" = "$expect" ]; then
      result="counterexample: $got"; ok=1
    else
      result="NO counterexample for $expect (errors: ${errors:-?} ${got})"
    fi
  fi
  printf '%-4s %-28s %-9s %12s  %-40s %6s\n' "$([ $ok = 1 ] && echo ok || echo FAIL)" \
    "$name" "$expect" "${states:--}" "$result" "$secs"
  [ $ok = 1 ]
}

show_trail() { # show_trail NAME
  local row="" r
  for r in "${RUNS[@]}"; do [ "$(field "$r" 0)" = "$1" ] && row=$r; done
  [ -n "$row" ] || die "no run named '$1' (see --list)"
  local expect sflags pflags=""
  expect=$(field "$row" 2); sflags="$(field "$row" 3) -DSHORTEST"
  if [ "$expect" = verified ]; then die "$1 is expected to verify: it has no counterexample"; fi
  sflags="$sflags -DONLY=${expect#P}"
  [ "$expect" = P4 ] || pflags="-E"
  local dir="$work/trail"
  # breadth-first search: the first counterexample found is a shortest one
  verify "$dir" "$sflags" "-O0 -DBFS" "$pflags" || die "$OUT"
  grep -qE 'errors: [1-9]' <<<"$OUT" || die "$1: no counterexample found"
  echo "Shortest counterexample for $1 (spin $sflags):"
  echo
  # shellcheck disable=SC2086
  ( cd "$dir" && spin -t $sflags refresh.pml 2>&1 ) |
    grep -vE '^(spin: |#processes|[0-9]+ processes created|\s+[A-Za-z_0-9]+(\[[0-9]+\])? = )' |
    grep -vE '^\s*[0-9]+:\s+proc\s' | sed -E 's/^ {4,}/  /'
  grep -E 'assertion violated|invalid end state' <<<"$OUT" | head -1
}

main() {
  case "${1:-}" in
    -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    --list)
      local r
      for r in "${RUNS[@]}"; do
        printf '%-28s %-9s %-9s %s\n' "$(field "$r" 0)" "$(field "$r" 1)" "$(field "$r" 2)" "$(field "$r" 3)"
      done
      exit 0 ;;
  esac
  need_tools
  work=$(mktemp -d "${TMPDIR:-/tmp}/authpool-spin.XXXXXX") || die "cannot create a temporary directory"
  trap 'rm -rf "$work"' EXIT
  if [ "${1:-}" = --trail ]; then
    [ $# -eq 2 ] || die "usage: check.sh --trail NAME"
    show_trail "$2"; exit 0
  fi
  select_runs "$@"
  local -a rows=("${SELECTED[@]}")
  echo "SPIN $(spin -V 2>&1 | head -1 | sed 's/^Spin Version //') -- model $model"
  printf '%-4s %-28s %-9s %12s  %-40s %6s\n' "" run expected "states" result secs
  local bad=0 row
  for row in "${rows[@]}"; do run_one "$row" "$work" || bad=$((bad + 1)); done
  if [ $bad = 0 ]; then
    echo "check.sh: all ${#rows[@]} runs as expected"
  else
    echo "check.sh: $bad of ${#rows[@]} runs NOT as expected"
    exit 1
  fi
}

main "$@"
