"""generation.strategy race: the generate stage in rounds, dropping configs detectably worse than the leader.

For each target, one model is loaded (a backend Session) and kept for every round. Round r: every
surviving config generates the round's rows (rule.plan_rounds) with the requests the full sweep would
make for them (generate/sharded.rows_of: the same per-request seeds; for transformers the same batches
by index), the race metric is scored on the cleaned responses (clean.stage, evaluate.metrics), and
rule.judge_round eliminates. When `keep` configs survive (or the rounds run out), the survivors generate
every row left, so their files are the full sweep's byte for byte and their manifest entries are current
for a later `strategy: full` run, which then generates only the eliminated configs.

After every round each config that generated in it has its file rewritten with all its rows so far and a
manifest entry marked `partial` ({rows, of, round_eliminated or racing}); then llm_responses/<target>/race.json
(the rounds' verdicts, tokens and wall time) is written atomically. A killed race resumes after the last
round race.json holds: the rows generated so far are read back from the files (each checked against the
manifest's digest), so the verdicts, race.csv and the files come out the same.

This package sits above the generate and evaluate stages (tests/test_layering.py): the race needs both,
and neither stage may import the other.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Optional

import numpy as np

from ..errors import UserError
from ..files import derive_seed, fingerprint, read_jsonl, write_json
from ..layout import RACE_COLUMNS, Workdir, read_json_if_present, read_race_state, write_table
from ..records import ConfigEntry, RaceRound, RaceState, ResponseRecord, records_digest
from ..provenance import logic
from ..clean.stage import clean_response
from ..evaluate.metrics import bootstrap_indices, build_metric
from ..generate.backend import ConfigDone, Request, RowResult
from ..generate.sharded import rows_of
from ..generate.stage import TargetPlan, clear_stale, config_wall, is_current, start_run, write_config
from .rule import RULES, judge_round, plan_rounds, row_units

log = logging.getLogger(__name__)

# Bump when the race takes other decisions or writes other files from the same inputs.
RACE_VERSION = 1


def race_identity(cfg, plan: TargetPlan, rounds: list[list[int]], metric) -> str:
    """What the race's decisions depend on: every config's inputs, the race settings, the rounds' rows, the
    metric's settings and this logic. race.json from another identity is not resumed."""
    return fingerprint({"jobs": [j.inputs for j in plan.jobs], "race": cfg.generation.race.model_dump(),
                        "rounds": rounds, "metric": metric.settings(), "template": cfg.template,
                        "logic": logic("race", RACE_VERSION, plan.logic)})


class _Race:
    """One target's race: its rows and results so far, and the files it writes."""

    def __init__(self, cfg, plan: TargetPlan):
        self.cfg, self.plan = cfg, plan
        self.settings = cfg.generation.race
        self.paths = Workdir(cfg.path)
        self.target = plan.target.name
        self.n = len(plan.rows)
        self.jobs = {j.config: j for j in plan.jobs}
        self.request = Request(checkpoint=plan.checkpoint, engine=plan.engine, row_ids=[r["id"] for r in plan.rows],
                               prompts=plan.prompts, jobs=list(plan.jobs), stop=plan.stop, seed=cfg.seed,
                               batch_size=cfg.generation.hf_batch_size, beam_impl=cfg.generation.beam_impl)
        # Where a row's answer depends on its batch (transformers), rounds take the full sweep's batches whole.
        self.batches = plan.backend.row_batches(self.request)
        self.rounds = plan_rounds(row_units(self.n, self.batches), self.settings.first_rows, self.settings.growth)
        self.alpha_round = self.settings.alpha / len(self.rounds)
        self.metric = build_metric(self.settings.metric, cfg.evaluation)
        self.identity = race_identity(cfg, plan, self.rounds, self.metric)
        self.results: dict[str, dict[int, RowResult]] = {c: {} for c in self.jobs}
        self.values: dict[str, dict[int, object]] = {c: {} for c in self.jobs}  # per-row metric values
        self.usage = {c: {"tokens": 0, "wall_s": 0.0} for c in self.jobs}
        self.beam_impl: dict[str, Optional[str]] = {}
        self.session = None
        self.build_s: Optional[float] = None
        self.state: Optional[RaceState] = None

    # --- state ------------------------------------------------------------------------------------

    def fresh_state(self) -> RaceState:
        return RaceState(identity=self.identity, target=self.target, metric=self.settings.metric,
                         alpha=self.settings.alpha, alpha_rule=self.settings.alpha_rule,
                         rule=RULES[self.settings.alpha_rule], planned_rounds=len(self.rounds),
                         alpha_round=self.alpha_round, keep=self.settings.keep, rows_total=self.n,
                         round_rows=[len(r) for r in self.rounds], configs=list(self.jobs), rounds=[],
                         survivors=list(self.jobs), eliminated={}, finished=False, usage=self.usage,
                         round_wall_s=[], finish_wall_s=None)

    def rows_of_config(self, config: str, state: RaceState) -> list[int]:
        """The rows `config` holds after the rounds `state` has finished (and the finish, if done)."""
        if state.finished and config in state.survivors:
            return list(range(self.n))
        last = state.eliminated_round(config) or len(state.rounds)
        return sorted(i for r in self.rounds[:last] for i in r)

    def resume(self, force: bool) -> bool:
        """Load race.json and the rows generated so far; False (start afresh) when anything does not match."""
        data = None if force else read_json_if_present(self.paths.race_state(self.target))
        state = RaceState.from_json(data) if data else None
        if state is None or state.identity != self.identity:
            return False
        index = {rid: i for i, rid in enumerate(self.request.row_ids)}
        for config in state.configs:
            want = self.rows_of_config(config, state)
            if not want:
                continue
            path = self.paths.response_file(self.target, config)
            entry = self.plan.manifest.entry(config)
            try:
                recs = read_jsonl(path)
            except (OSError, UserError):
                return False
            if (entry is None or entry.inputs != self.jobs[config].inputs
                    or records_digest(recs) != entry.generated_sha256):
                return False
            got = {index.get(r.id): r for r in map(ResponseRecord.from_json, recs)}
            if any(i not in got for i in want):
                return False
            self.results[config] = {i: RowResult(got[i].response_raw, got[i].finish_reason, got[i].num_tokens)
                                    for i in want}
            self.beam_impl[config] = entry.beam_impl
        self.state = state
        self.usage = state.usage
        return True

    # --- generating -------------------------------------------------------------------------------

    @property
    def session_builds(self) -> int:
        """Models the race loaded (none when nothing was generated; one per replica and restart on Ray)."""
        return self.session.builds if self.session is not None else 0

    def generate(self, rows: list[int], configs: list[str]) -> float:
        """Every config of `configs` on `rows` with the loaded model; returns the wall time."""
        if self.session is None:
            self.session = self.plan.backend.open(self.request)
            self.build_s = self.session.build_s
            log.info("%s: %s built in %.1f s, kept for every round", self.target, self.plan.backend.label, self.build_s)
        batches = None
        if self.batches is not None:
            wanted = set(rows)
            batches = [(b, idx) for b, idx in enumerate(self.batches) if set(idx) <= wanted]
        sub = rows_of(self.request, rows, [self.jobs[c] for c in configs], batches=batches)
        t = time.perf_counter()
        for msg in self.session.run(sub):
            if not isinstance(msg, ConfigDone):  # a session sends no EngineBuilt; a race asks for no checks
                continue
            for row, res in zip(rows, msg.results):
                self.results[msg.config][row] = res
            tokens = sum(r.num_tokens for r in msg.results)
            self.usage[msg.config]["tokens"] += tokens
            self.usage[msg.config]["wall_s"] += config_wall(msg, tokens)
            self.beam_impl[msg.config] = msg.beam_impl
        return time.perf_counter() - t

    # --- scoring ----------------------------------------------------------------------------------

    def per_config(self, configs: list[str], rows: list[int]) -> dict[str, np.ndarray]:
        """The race metric's per-row values of `configs` on `rows`: the rows not scored yet in one metric call."""
        todo = [(c, i) for c in configs for i in rows if i not in self.values[c]]
        if todo:
            hyps = [clean_response(self.results[c][i].response_raw, self.plan.prompts[i], template=self.cfg.template)[0]
                    for c, i in todo]
            refs = [self.plan.rows[i]["output"] for _, i in todo]
            groups = [sum(1 for c2, _ in todo if c2 == c) for c in configs]
            values = self.metric.rows(hyps, refs, groups=[g for g in groups if g])
            for (c, i), v in zip(todo, values):
                self.values[c][i] = v
        return {c: np.asarray([self.values[c][i] for i in rows]) for c in configs}

    # --- files ------------------------------------------------------------------------------------

    def write(self, configs: list[str], state: RaceState) -> None:
        """Rewrite the files and manifest entries of `configs` with every row they hold now."""
        for config in configs:
            rows = sorted(self.results[config])
            done = ConfigDone(config, [self.results[config][i] for i in rows], self.usage[config]["wall_s"],
                              [config], self.usage[config]["tokens"], beam_impl=self.beam_impl.get(config))
            finished = state.finished and config in state.survivors
            extra = ConfigEntry.race_marks(len(state.rounds), self.paths.race_state(self.target).name, len(rows),
                                           self.n, state.eliminated_round(config), finished)
            write_config(self.cfg, self.plan, self.jobs[config], done, self.usage[config]["wall_s"], rows, extra)
        write_json(self.paths.manifest(self.target), self.plan.manifest.to_json())

    # --- the race ---------------------------------------------------------------------------------

    def run(self, force: bool) -> dict:
        plan, settings = self.plan, self.settings
        clear_stale(plan)
        resumed = self.resume(force)
        state = self.state if resumed else self.fresh_state()
        if resumed and state.finished and all(
                is_current(self.paths.response_file(self.target, c), self.jobs[c], plan.manifest, plan.test_sha)
                for c in state.survivors):
            log.info("%s: race finished earlier (%d survivors), nothing to generate", self.target,
                     len(state.survivors))
            return self.summary(state, generated=[])
        if not resumed:  # a race of other inputs (or none): its record must not pass for this one's
            self.paths.race_state(self.target).unlink(missing_ok=True)
        if not resumed and not plan.pending:
            # Every config already holds every row (a full sweep ran): nothing left to save by racing.
            log.info("%s: all %d configs current with every row (a full sweep), nothing to race", self.target,
                     len(plan.jobs))
            return self.summary(state, generated=[])
        if resumed:
            log.info("%s: resuming the race after round %d of %d", self.target, len(state.rounds), len(self.rounds))
        # The configs written so far keep their entries (their files are checked above); the rest are to come.
        run = start_run(plan, [] if resumed else plan.jobs)
        plan.manifest.batch_invariance = {"skipped": "generation.strategy race: no batch-invariance check"}
        plan.manifest.set_race(self.paths.race_state(self.target).name, state.rule)
        write_json(self.paths.manifest(self.target), plan.manifest.to_json())
        written: set[str] = set()
        try:
            for r in range(len(state.rounds), len(self.rounds)):
                survivors = list(state.survivors)
                if len(survivors) <= settings.keep:
                    break
                wall = self.generate(self.rounds[r], survivors)
                used = sorted(i for rr in self.rounds[:r + 1] for i in rr)
                per_config = self.per_config(survivors, used)
                idx = bootstrap_indices(len(used), settings.resamples, derive_seed(self.cfg.seed, "race", r + 1))
                leader, verdicts = judge_round(self.metric, per_config, idx, self.alpha_round, settings.keep)
                out = [v.config for v in verdicts if v.eliminated]
                state.rounds.append(RaceRound(round=r + 1, rows_added=len(self.rounds[r]), rows_used=len(used),
                                              survivors_before=survivors, leader=leader,
                                              verdicts=[vars(v) for v in verdicts], eliminated=out))
                state.survivors = [c for c in survivors if c not in out]
                for c in out:
                    state.eliminate(c, r + 1, len(used))
                state.round_wall_s.append(round(wall, 3))
                self.write(survivors, state)
                written.update(survivors)
                write_json(self.paths.race_state(self.target), state.to_json())
                log.info("%s: race round %d on %d rows: leader %s, %d eliminated, %d survive", self.target, r + 1,
                         len(used), leader, len(out), len(state.survivors))
            rest = sorted(set(range(self.n)) - {i for i in self.results[state.survivors[0]]})
            t = time.perf_counter()
            if rest:
                self.generate(rest, state.survivors)
            state.finish_wall_s = round(time.perf_counter() - t, 3)
            state.finished = True
            self.write(state.survivors, state)
            written.update(state.survivors)
            write_json(self.paths.race_state(self.target), state.to_json())
        except BaseException as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            plan.manifest.mark_failed(f"the race started {run.started} failed: {reason[:300]}")
            write_json(self.paths.manifest(self.target), plan.manifest.to_json())
            raise
        finally:
            if self.session is not None:
                self.session.close()
        plan.manifest.mark_finished()
        run.set_written(sorted(written))
        for _ in range(self.session_builds):
            run.built_engine(self.build_s)
            plan.manifest.count_engine_build()
        write_json(self.paths.manifest(self.target), plan.manifest.to_json())
        return self.summary(state, generated=sorted(written))

    def summary(self, state: RaceState, generated: list[str]) -> dict:
        tokens = state.tokens()
        wall = sum(u["wall_s"] for u in state.usage.values())
        return {"target": self.target, "backend": self.plan.backend.name, "configs": len(self.jobs),
                "generated": generated, "skipped": [c for c in self.jobs if c not in generated],
                "tokens": tokens, "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 1) if wall else None,
                "engine_builds": self.session_builds,
                "engine_build_s": round(self.build_s, 2) if self.build_s is not None else None,
                "race": {"survivors": list(state.survivors), "rounds": len(state.rounds),
                         "planned_rounds": len(self.rounds), "eliminated": dict(state.eliminated),
                         "full_sweep_tokens_estimate": state.full_sweep_tokens()}}


def race_target(cfg, plan: TargetPlan, force: bool = False) -> dict:
    """generate()'s runner for generation.strategy race: race one target; its summary."""
    summary = _Race(cfg, plan).run(force)
    write_race_table(cfg)
    return summary


def race_rows(cfg, target: str) -> list[dict]:
    """race.csv's rows of one target from its race.json ([] when it has none)."""
    state = read_race_state(cfg.path, target)
    if state is None:
        return []
    out = []
    last_verdict: dict[str, tuple[RaceRound, dict]] = {}
    for rnd in state.rounds:
        for v in rnd.verdicts:
            last_verdict[v["config"]] = (rnd, v)
    for config in state.configs:
        if config not in last_verdict:
            continue
        rnd, v = last_verdict[config]
        gone = state.eliminated_round(config)
        out.append({"model": target, "config": config,
                    "status": "eliminated" if gone else ("survivor" if state.finished else "racing"),
                    "round_eliminated": gone,
                    "rows_used": state.eliminated_rows(config) if gone else (state.rows_total if state.finished else
                                                                             rnd.rows_used),
                    "rows_total": state.rows_total, "rows_compared": rnd.rows_used, "metric": state.metric,
                    "score": v["score"], "leader": rnd.leader, "diff": v["diff"], "ci_low": v["ci_low"],
                    "ci_high": v["ci_high"], "p": v["p"], "p_holm": v["p_holm"], "alpha_round": state.alpha_round,
                    "rule": state.alpha_rule})
    return out


def write_race_table(cfg) -> None:
    """eval_results/race.csv over every target of the study that has raced."""
    rows = [r for t in cfg.run_targets() for r in race_rows(cfg, t.name)]
    if rows:
        write_table(Workdir(cfg.path).race_table, RACE_COLUMNS, rows)
    else:
        Workdir(cfg.path).race_table.unlink(missing_ok=True)


def generate_responses(cfg, model: Optional[str] = None, backend: Optional[str] = None, limit: Optional[int] = None,
                       force: bool = False) -> list[dict]:
    """The generate stage by the config's generation.strategy: the full sweep, or the race."""
    from ..generate.stage import generate

    if cfg.generation.strategy != "race":
        summaries = generate(cfg, model=model, backend=backend, limit=limit, force=force)
        # Every config of these targets now holds every row: an earlier race's record no longer describes them.
        paths = Workdir(cfg.path)
        stale = [t for t in cfg.run_targets(model) if paths.race_state(t.name).is_file()]
        for t in stale:
            paths.race_state(t.name).unlink()
        if stale:
            write_race_table(cfg)
        return summaries
    summaries = generate(cfg, model=model, backend=backend, limit=limit, force=force,
                         runner=lambda c, plan: race_target(c, plan, force))
    for s in summaries:
        race = s["race"]
        share = s["tokens"] / race["full_sweep_tokens_estimate"] if race["full_sweep_tokens_estimate"] else 0
        print(f"{s['target']}: race of {s['configs']} configs, {race['rounds']} of {race['planned_rounds']} planned "
              f"rounds, {len(race['survivors'])} survivors ({', '.join(race['survivors'])}); {s['tokens']} tokens "
              f"generated, {share:.0%} of a full sweep's (estimated)", file=sys.stderr)
    return summaries
