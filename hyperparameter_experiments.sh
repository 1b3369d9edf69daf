#!/usr/bin/env bash
# The whole tunesweep pipeline for one experiment config:
#   split -> finetune every model -> generate every decoding config -> clean -> judge (when evaluation.judge is set) -> score -> report
#
#   bash hyperparameter_experiments.sh [--config configs/alpaca.yaml] [--from STAGE] [--only STAGE] [--limit N]
#
# Every stage skips work whose inputs are unchanged, so after a failure or a kill, rerunning the
# same command continues where it stopped. Each stage logs to <workdir>/logs/<stage>.log.
set -euo pipefail

CONFIG=configs/alpaca.yaml
FROM=""
ONLY=""
LIMIT=""

usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config|-c) CONFIG="$2"; shift 2 ;;
    --from) FROM="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --limit) LIMIT="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "hyperparameter_experiments.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done
# Which tunesweep: $TUNESWEEP (a command) if set; else the one in $TUNESWEEP_VENV if set; else `tunesweep` on
# PATH; else the checkout's .venv (what `make setup` builds), so no `activate` is needed after `make setup`.
if [[ -z "${TUNESWEEP:-}" ]]; then
  VENV=${TUNESWEEP_VENV:-}
  if [[ -z "$VENV" ]] && ! command -v tunesweep >/dev/null 2>&1; then
    VENV="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/.venv"
  fi
  if [[ -n "$VENV" ]]; then
    if [[ ! -x "$VENV/bin/tunesweep" ]]; then
      echo "hyperparameter_experiments.sh: no \`tunesweep\` on PATH and none in $VENV: run \`make setup\` in the checkout (or activate the environment that has tunesweep, or set TUNESWEEP_VENV to it)" >&2
      exit 2
    fi
    # As `make demo` and `activate` do: the stages' child processes find the same environment's tools.
    export PATH="$VENV/bin:$PATH"
  fi
  TUNESWEEP=tunesweep
fi
# The stage list has one home, tunesweep/stages.py; `tunesweep run` reads the same.
mapfile -t STAGES < <($TUNESWEEP stages)
[[ ${#STAGES[@]} -gt 0 ]] || { echo "hyperparameter_experiments.sh: \`$TUNESWEEP stages\` printed no stages" >&2; exit 2; }
for s in "$FROM" "$ONLY"; do
  if [[ -n "$s" && ! " ${STAGES[*]} " =~ " $s " ]]; then
    echo "hyperparameter_experiments.sh: unknown stage '$s' (stages: ${STAGES[*]})" >&2; exit 2
  fi
done

# Validates the whole config before any work starts (exit 2 with the key and value at fault).
WORKDIR=$($TUNESWEEP plan --config "$CONFIG" --get workdir)
LOGDIR="$WORKDIR/logs"
mkdir -p "$LOGDIR"

run_stage() {
  local stage=$1; shift
  local log="$LOGDIR/$stage.log"
  echo "=== $stage ($(date '+%H:%M:%S')) -> $log"
  if ! $TUNESWEEP "$stage" --config "$CONFIG" "$@" 2>&1 | tee -a "$log"; then
    echo "hyperparameter_experiments.sh: stage '$stage' failed; see $log. Rerun the same command to continue." >&2
    exit 1
  fi
}

started=""
for stage in "${STAGES[@]}"; do
  if [[ -n "$ONLY" && "$stage" != "$ONLY" ]]; then continue; fi
  if [[ -n "$FROM" && -z "$started" && "$stage" != "$FROM" ]]; then continue; fi
  started=1
  case "$stage" in
    generate) run_stage generate ${LIMIT:+--limit "$LIMIT"} ;;
    *) run_stage "$stage" ;;
  esac
done

echo "done. tables: $WORKDIR/eval_results/  report: $WORKDIR/eval_results/report.md  plots: $WORKDIR/eval_results/plots/"
