"""The workdir: every path under it, and the readers and writers of the files that pass between stages.

    alpaca_data/{train,test}.jsonl, split.json                  split      -> finetune, generate
    finetuned_models/<model>/ (+ <model>.training/, .<model>.staging/)   finetune -> generate, score
    llm_responses/<target>/<config>.jsonl, manifest.json       generate   -> clean, judge, score, human-eval, report
    llm_responses/<target>/cleaning.json                       clean      -> report
    eval_results/<target>.csv/.md, all.csv, perplexity.csv, comparisons.csv, metrics.json, .cache/   score -> report
    eval_results/human_eval/{sheet.csv,rubric.md,key.json}, human.csv/.json         human-eval -> score, report
    eval_results/judge/<target>/<config>.jsonl, manifest.json   judge     -> score, report
    eval_results/report.md, plots/<factor>_<metric>.png        report
    logs/<stage>.log                                           pipeline

No other module spells these names. The column names of the tables are defined here too (those of
eval_results/<model>.csv by the metric registry, tunesweep/metric_registry.py), and
`format_cell` / `write_table` / `markdown_table` are the one way a number becomes a table cell.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .errors import UserError
from .files import confine_to, escaping_link, open_no_follow, read_json, read_jsonl, sha256_file, write_text
from .provenance import checkpoint_identity
from .records import (GenerationManifest, RaceState, ResponseRecord, cleaned_digest, cleaning_digests, judge_target,
                      records_digest, scored_from, vouched_files)

# --- column names of the inter-stage files ----------------------------------------------------------

# eval_results/<model>.csv: metric_registry.table_columns(the metrics scored), from the metric registry.
TIDY_COLUMNS = ["model", "config", "parameter", "value", "metric", "score", "ci_low", "ci_high"]
PERPLEXITY_COLUMNS = ["model", "perplexity", "ppl_ci_low", "ppl_ci_high", "nll", "tokens", "checkpoint"]
HUMAN_COLUMNS = ["model", "config", "human", "human_ci_low", "human_ci_high", "human_n", "raters", "agreement"]
# eval_results/comparisons.csv: `config` of `model` minus `reference` (the centre config of the same model when
# versus = "centre", its best config for that metric when "best", the same config of the base model when
# "base"), paired bootstrap over the rows.
COMPARISON_COLUMNS = ["model", "metric", "config", "versus", "reference", "score", "reference_score", "diff",
                      "ci_low", "ci_high", "p", "p_holm", "resamples"]
# eval_results/race.csv (generation.strategy race): per model and config, where the race left it. `rows_used`:
# rows generated; `rows_compared`: rows of the round whose verdict this is (elimination, or the last test round
# for a survivor); score, diff to that round's leader, its CI, p and Holm p are on those rows.
RACE_COLUMNS = ["model", "config", "status", "round_eliminated", "rows_used", "rows_total", "rows_compared", "metric",
                "score", "leader", "diff", "ci_low", "ci_high", "p", "p_holm", "alpha_round", "rule"]
RAY_PROBE = ".tunesweep-ray-probe"  # the workdir's name for the file execution: ray checks its workers see
ROW_SCORE_KEYS = ["config", "id"]  # eval_results/rows/<target>.csv: then one column per text metric scored
MANIFEST_NAME = "manifest.json"  # llm_responses/<target>/: the generation manifest beside the response files


class Workdir:
    """The paths of one study's workdir (the config's `workdir`)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # split
    @property
    def data_dir(self) -> Path:
        return self.root / "alpaca_data"

    def split_file(self, which: str) -> Path:
        """alpaca_data/train.jsonl or test.jsonl."""
        return self.data_dir / f"{which}.jsonl"

    @property
    def split_meta(self) -> Path:
        return self.data_dir / "split.json"

    # finetune
    @property
    def models_dir(self) -> Path:
        return self.root / "finetuned_models"

    def model_dir(self, model: str) -> Path:
        return self.models_dir / model

    def model_record(self, model: str) -> Path:
        """tunesweep.json: what <model>/ was trained from and how the training went."""
        return self.model_dir(model) / "tunesweep.json"

    def training_dir(self, model: str) -> Path:
        """TRL checkpoints, inputs.json, train.log, runs/ while <model>/ is being trained."""
        return self.models_dir / f"{model}.training"

    def staging_dir(self, model: str) -> Path:
        """The next <model>/ while it is written; renamed into place when complete."""
        return self.models_dir / f".{model}.staging"

    # generate, clean
    @property
    def responses_root(self) -> Path:
        return self.root / "llm_responses"

    def responses_dir(self, target: str) -> Path:
        return self.responses_root / target

    def response_file(self, target: str, config: str) -> Path:
        return self.responses_dir(target) / f"{config}.jsonl"

    def manifest(self, target: str) -> Path:
        return self.responses_dir(target) / MANIFEST_NAME

    def cleaning(self, target: str) -> Path:
        return self.responses_dir(target) / "cleaning.json"

    def race_state(self, target: str) -> Path:
        """generation.strategy race: the rounds finished so far and their verdicts (written after each round)."""
        return self.responses_dir(target) / "race.json"

    @property
    def race_table(self) -> Path:
        return self.eval_dir / "race.csv"

    # score, human-eval, report
    @property
    def eval_dir(self) -> Path:
        return self.root / "eval_results"

    def table(self, target: str, suffix: str = "csv") -> Path:
        return self.eval_dir / f"{target}.{suffix}"

    def row_scores(self, target: str) -> Path:
        """eval_results/rows/<target>.csv: each test row's own score per config (ROW_SCORE_KEYS, then metrics)."""
        return self.eval_dir / "rows" / f"{target}.csv"

    @property
    def tidy_table(self) -> Path:
        return self.eval_dir / "all.csv"

    @property
    def perplexity_table(self) -> Path:
        return self.eval_dir / "perplexity.csv"

    @property
    def metrics_json(self) -> Path:
        return self.eval_dir / "metrics.json"

    def score_cache(self, target: str) -> Path:
        return self.eval_dir / ".cache" / f"{target}.json"

    @property
    def human_table(self) -> Path:
        return self.eval_dir / "human.csv"

    @property
    def human_summary(self) -> Path:
        return self.eval_dir / "human.json"

    @property
    def human_eval_dir(self) -> Path:
        return self.eval_dir / "human_eval"

    @property
    def human_key(self) -> Path:
        """The private item -> (model, config, id) map; raters must never see it."""
        return self.human_eval_dir / "key.json"

    @property
    def comparisons(self) -> Path:
        """Paired differences to the centre config and to the base, with CIs and p-values."""
        return self.eval_dir / "comparisons.csv"

    @property
    def judge_dir(self) -> Path:
        """eval_results/judge/: the judge stage's verdicts, <target>/<config>.jsonl, and manifest.json."""
        return self.eval_dir / "judge"

    def judge_file(self, target: str, config: str) -> Path:
        return self.judge_dir / target / f"{config}.jsonl"

    @property
    def judge_manifest(self) -> Path:
        return self.judge_dir / "manifest.json"

    @property
    def report_html(self) -> Path:
        return self.eval_dir / "report.html"

    @property
    def report(self) -> Path:
        return self.eval_dir / "report.md"

    @property
    def plots_dir(self) -> Path:
        return self.eval_dir / "plots"

    # pipeline
    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def log(self, stage: str) -> Path:
        return self.logs_dir / f"{stage}.log"

    @property
    def lock(self) -> Path:
        """Held by the one tunesweep process that works in this workdir (its pid and command inside)."""
        return self.root / ".tunesweep.lock"


def prepare_workdir(root: str | os.PathLike) -> Path:
    """The workdir, created if missing; a file in its place or a folder that cannot be written is a UserError."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: the workdir is a file, not a folder; set `workdir` (or --workdir) to a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{root}: cannot create the workdir ({exc.strerror or exc})") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise UserError(f"{root}: the workdir is not writable; fix its permissions or set another `workdir`")
    return root


def check_tree(root: Path) -> None:
    """Before a command writes, one line naming the first problem among tunesweep's files and folders in the
    workdir: a symlink that leads out of it (its writers, TRL's and vLLM's included, would follow it and write
    elsewhere), a file where a folder belongs, a folder this user cannot write (a stage would fail halfway)."""
    paths = Workdir(root)
    folders = [paths.data_dir, paths.models_dir, paths.responses_root, paths.eval_dir, paths.logs_dir]
    for top in folders + [paths.lock, root / RAY_PROBE]:
        found = [top] if top.is_symlink() else []
        if not found and top in folders and top.exists() and not top.is_dir():
            raise UserError(f"{top}: a file where tunesweep keeps a folder; move it away (or set another workdir)")
        if not found and top.is_dir():
            for folder, dirs, files in os.walk(top):  # followlinks=False: a linked folder is seen, not entered
                if not os.access(folder, os.W_OK | os.X_OK):
                    raise UserError(f"{folder}: not writable by this user (uid {os.getuid()}); fix its permissions "
                                    "(or set another workdir)")
                found += [Path(folder) / n for n in dirs + files if os.path.islink(os.path.join(folder, n))]
        for link in found:
            if escaping_link(link, root) is not None:
                raise UserError(f"{link}: a symlink that leads out of the workdir {root} (to {os.path.realpath(link)}); "
                                "tunesweep writes only inside its workdir: remove the link (or copy what it points to)")


class WorkdirLock:
    """An exclusive lock on a workdir for the life of one command: a second tunesweep on the same workdir
    says which process holds it and stops (exit 2) instead of training the same model twice. flock: the
    kernel releases it when the holder dies, even by SIGKILL, so a stale lock file never blocks a rerun."""

    def __init__(self, root: str | os.PathLike, command: str):
        root = prepare_workdir(root)
        check_tree(root)
        confine_to(root)
        self.path = Workdir(root).lock
        self.command = command
        self.fd: Optional[int] = None

    def __enter__(self) -> "WorkdirLock":
        import fcntl

        fd = open_no_follow(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{self.path}: this workdir is in use by {holder}; wait for it to finish "
                            f"(or stop it) and rerun") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} (`{self.command}`)\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing releases the flock
            self.fd = None


# --- alpaca_data/ ----------------------------------------------------------------------------------

def load_split(workdir: str | os.PathLike, which: str) -> list[dict]:
    """Read alpaca_data/<which>.jsonl, failing with a pointer to `split` if it is not there."""
    path = Workdir(workdir).split_file(which)
    if not path.is_file():
        raise UserError(f"{path}: not found; run `tunesweep split --config ...` first")
    return read_jsonl(path)


# --- llm_responses/ --------------------------------------------------------------------------------

def read_json_if_present(path: Path) -> Optional[dict]:
    """A JSON file written by an earlier stage, or None when there is none; a broken one is a UserError."""
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a JSON {type(data).__name__} where tunesweep writes an object (edited or written by "
                        "something else); delete it and rerun the stage that writes it")
    return data


@dataclass
class TargetResponses:
    """The responses of one target (model or <model>-base) for every config of the sweep."""

    target: str
    folder: Path
    manifest: GenerationManifest
    records: dict[str, list[ResponseRecord]]  # config name -> records, in test.jsonl order
    paths: dict[str, Path]

    @property
    def n_rows(self) -> int:
        return len(next(iter(self.records.values()))) if self.records else 0


def response_settings(cfg, backend: str) -> dict:
    """The study settings that shape every response of a config generated by `backend`: generate records them
    per config (and they are part of its inputs), score and report compare them with the config as it is now,
    so a changed max_new_tokens, seed or template (or hf batch size, which pads rows together and seeds a
    batch) regenerates, or stops score and report, instead of mixing old responses with new settings."""
    g = cfg.generation
    return {"max_new_tokens": g.max_new_tokens, "seed": cfg.seed, "template": cfg.template,
            "hf_batch_size": g.hf_batch_size if backend == "hf" else None}


def settings_change(cfg, entry) -> Optional[str]:
    """'max_new_tokens 16 -> 32, ...' when a manifest entry was generated with other settings than `cfg` has
    now, else None."""
    recorded = entry.settings
    now = response_settings(cfg, entry.backend)
    if recorded == now:
        return None
    if not isinstance(recorded, dict):
        return "settings not recorded (generated by an older tunesweep)"
    return ", ".join(f"{k} {recorded.get(k)!r} -> {v!r}" for k, v in now.items() if recorded.get(k) != v)


def test_set_sha256(workdir: str | os.PathLike) -> str:
    """sha256 of alpaca_data/test.jsonl: the test set a manifest's responses were generated from."""
    path = Workdir(workdir).split_file("test")
    if not path.is_file():
        raise UserError(f"{path}: not found; run `tunesweep split --config ...` first")
    return sha256_file(path)


def _regenerate(target: str) -> str:
    return f"regenerate it with `tunesweep generate --config <config> --model {target}`"


def read_target_responses(workdir: str | os.PathLike, target: str, configs: Sequence[str],
                          fields: Sequence[str] = ("response", "reference"),
                          checkpoint_hash: Optional[str] = None, cfg=None) -> TargetResponses:
    """Read and check every config file of `target` against what the current run vouches for: manifest.json
    has an entry for the config whose checkpoint hash (and `checkpoint_hash`, the identity of the
    checkpoint as it is now, when given) and test-set hash match, the file's content is what generate
    wrote (its recorded sha256), and its rows are the first `test_rows` rows of alpaca_data/test.jsonl, in
    order. Any gap or mismatch is a one-line UserError naming the file and the command that regenerates it
    (a results table never silently drops a config or a row, nor scores another run's responses).
    When `response` is read, it must be what the clean stage wrote (cleaning.json's cleaned_sha256); with
    `cfg`, every config must have been generated with the settings `cfg` has now (response_settings).

    The `reference` of every record returned is the `output` of its row in alpaca_data/test.jsonl, never
    what the response file says."""
    paths = Workdir(workdir)
    manifest, test_rows = _manifest_and_test_rows(workdir, target)
    test_sha = test_set_sha256(workdir)
    entries = manifest.raw_entries or {}
    if not isinstance(entries, dict):
        raise UserError(f"{paths.manifest(target)}: configs = a JSON {type(entries).__name__}, not an object of "
                        f"configs (edited or written by something else); {_regenerate(target)}")
    cleaned = _cleaned_digests(paths, target) if "response" in fields else {}
    records: dict[str, list[ResponseRecord]] = {}
    files: dict[str, Path] = {}
    for config in configs:
        path = paths.response_file(target, config)
        if not path.is_file():
            raise UserError(f"{path}: not found: config {config} has no responses for {target!r} "
                            f"(run `tunesweep generate`); a results table never drops a config")
        entry = manifest.entry(config)
        if entry is None:
            why = manifest.incomplete  # set by generate while it runs, and left by a run that failed
            state = f"generation of {target!r} is incomplete ({why})" if why else "not written by the current run"
            raise UserError(f"{path}: no entry for config {config} in {paths.manifest(target).name} ({state}); "
                            f"{_regenerate(target)}")
        raw = read_jsonl(path)
        recs = _typed_response_file(path, raw, len(test_rows), fields)
        _check_vouched_responses(path, target, raw, entry, manifest, test_sha, checkpoint_hash, cfg)
        _check_rows(path, target, config, recs, [r.get("id") for r in test_rows])
        if "response" in fields and cleaned.get(config) != cleaned_digest(recs):
            raise UserError(f"{path}: its `response` fields are not what the clean stage wrote "
                            f"({paths.cleaning(target).name}'s cleaned_sha256): edited since; run `tunesweep clean`")
        # The reference is the test set's, not whatever the response file says.
        for rec, test in zip(recs, test_rows):
            rec.reference = test["output"]
        records[config] = recs
        files[config] = path
    return TargetResponses(target, paths.responses_dir(target), manifest, records, files)


def read_manifest(workdir: str | os.PathLike, target: str) -> GenerationManifest:
    """llm_responses/<target>/manifest.json (empty when there is none; a broken one is a one-line UserError)."""
    return GenerationManifest(read_json_if_present(Workdir(workdir).manifest(target)) or {})


def partial_configs(workdir: str | os.PathLike, target: str) -> dict[str, int]:
    """{config: rows it holds} of the configs a race eliminated (manifest entries marked `partial`): they hold
    fewer rows than the others, so clean, score and report leave them out (eval_results/race.csv has them)."""
    return read_manifest(workdir, target).partial_configs()


def read_race_state(workdir: str | os.PathLike, target: str) -> Optional[RaceState]:
    """llm_responses/<target>/race.json when the target raced at least one round, else None."""
    data = read_json_if_present(Workdir(workdir).race_state(target))
    state = RaceState.from_json(data) if data else None
    return state if state is not None and state.rounds else None


def _manifest_and_test_rows(workdir: str | os.PathLike, target: str) -> tuple[GenerationManifest, list[dict]]:
    """The target's manifest.json and the first `test_rows` rows of alpaca_data/test.jsonl it was generated from."""
    manifest_path = Workdir(workdir).manifest(target)
    data = read_json_if_present(manifest_path)
    if data is None:
        raise UserError(f"{manifest_path}: not found; run `tunesweep generate` for {target!r} first")
    manifest = GenerationManifest(data)
    expected = manifest.test_rows
    if not isinstance(expected, int) or isinstance(expected, bool) or expected < 1:
        raise UserError(f"{manifest_path}: test_rows = {expected!r}: expected the number of rows generated per config")
    test_rows = load_split(workdir, "test")
    if len(test_rows) < expected:
        raise UserError(f"{manifest_path}: test_rows = {expected}, but alpaca_data/test.jsonl has {len(test_rows)} "
                        f"rows: generated from another split; {_regenerate(target)}")
    return manifest, test_rows[:expected]


def _typed_response_file(path: Path, raw: list[dict], expected: int, fields: Sequence[str]) -> list[ResponseRecord]:
    """A response file's records: `expected` of them, each with every field of `fields` as text."""
    if len(raw) != expected:
        raise UserError(f"{path}: {len(raw)} rows, but {MANIFEST_NAME} says test_rows = {expected}: "
                        f"incomplete responses (rerun `tunesweep generate`)")
    recs = [ResponseRecord.from_json(r) for r in raw]
    for row, rec in enumerate(recs, 1):
        for key in fields:
            value = getattr(rec, key)
            if not isinstance(value, str):
                hint = "run `tunesweep clean`" if key == "response" else "rerun `tunesweep generate`"
                raise UserError(f"{path}: row {row} (id {rec.id!r}): {key} = {value!r}: "
                                f"missing or not text ({hint})")
    return recs


def _check_vouched_responses(path: Path, target: str, raw: list[dict], entry, manifest: GenerationManifest,
                             test_sha: str, checkpoint_hash: Optional[str], cfg) -> None:
    """The config's manifest entry vouches for the file: same test set, same checkpoint, same content, and (with
    `cfg`) the settings the config has now."""
    if entry.test_set_sha256 != test_sha:
        raise UserError(f"{path}: generated from another alpaca_data/test.jsonl than the current one "
                        f"(re-split since?); {_regenerate(target)}")
    if entry.checkpoint_hash != manifest.checkpoint_hash or (
            checkpoint_hash is not None and entry.checkpoint_hash != checkpoint_hash):
        raise UserError(f"{path}: generated from another checkpoint than {manifest.checkpoint!r} is now "
                        f"(checkpoint hash {str(entry.checkpoint_hash)[:12]}, now "
                        f"{str(checkpoint_hash or manifest.checkpoint_hash)[:12]}); {_regenerate(target)}")
    if records_digest(raw) != entry.generated_sha256:
        raise UserError(f"{path}: its content differs from what generate wrote ({MANIFEST_NAME}'s "
                        f"generated_sha256): edited or left from another run; {_regenerate(target)}")
    if cfg is not None and (change := settings_change(cfg, entry)):
        raise UserError(f"{path}: generated with other settings than the config has now ({change}); "
                        f"{_regenerate(target)}")


def _check_rows(path: Path, target: str, config: str, recs: list[ResponseRecord], test_ids: list) -> None:
    """The file's rows are the test set's, in order, and the records are this target's for this config."""
    ids = [rec.id for rec in recs]
    if ids != test_ids:
        row = next(i for i, (a, b) in enumerate(zip(ids, test_ids), 1) if a != b)
        raise UserError(f"{path}: row {row}: id {ids[row - 1]!r} where alpaca_data/test.jsonl has "
                        f"{test_ids[row - 1]!r}: responses of another test set; {_regenerate(target)}")
    for row, rec in enumerate(recs, 1):
        if rec.config not in (None, config) or rec.model not in (None, target):
            raise UserError(f"{path}: row {row}: config {rec.config!r} / model {rec.model!r}: "
                            f"not the responses of {target!r} for {config}; {_regenerate(target)}")


def current_checkpoint_hash(cfg, target) -> str:
    """The identity of the target's checkpoint as it is now (the hash generate recorded is reused while
    the files' names, sizes and mtimes are unchanged): responses from another checkpoint are not scored."""
    checkpoint = target.checkpoint(cfg.path)
    if not target.is_base and not Path(checkpoint).is_dir():
        raise UserError(f"{checkpoint}: fine-tuned checkpoint of {target.name!r} not found, so its responses cannot "
                        f"be vouched for; run `tunesweep finetune --config <config> --model {target.name}` first")
    recorded = read_manifest(cfg.path, target.name).recorded_identity(checkpoint)
    return checkpoint_identity(checkpoint, recorded)["sha256"]


def read_judgments(workdir, target: str, configs: list[str]) -> Optional[dict]:
    """{config: records} of eval_results/judge/<target>/ as the judge manifest vouches for them (sha256 per file;
    the judge stage writes them, score and report read them), None when the target was not judged; a file edited
    since the judge wrote it is a one-line UserError."""
    paths = Workdir(workdir)
    judged = judge_target(read_json_if_present(paths.judge_manifest), target)
    if judged is None or not judged.entries():
        return None
    out = {}
    for config in configs:
        e = judged.entry(config)
        if e is None:
            continue
        path = paths.judge_file(target, config)
        if not path.is_file() or sha256_file(path) != e.sha256:
            raise UserError(f"{path}: missing or edited since the judge stage wrote it (its sha256 differs from "
                            f"{paths.judge_manifest.name}'s); rerun `tunesweep judge --config <config>`")
        out[config] = read_jsonl(path)
    return out


def _cleaned_digests(paths: "Workdir", target: str) -> dict:
    """{config: cleaned_sha256} from cleaning.json ({} when clean has not run)."""
    return cleaning_digests(read_json_if_present(paths.cleaning(target)))


def responses_fingerprint(workdir: str | os.PathLike, target: str, configs: Sequence[str]) -> dict:
    """What score vouches for in metrics.json's `scored_from`, and report checks is still current, from the
    files that vouch for the responses: manifest.json (checkpoint, what generate wrote and with which settings,
    per config), cleaning.json (what clean wrote) and alpaca_data/test.jsonl."""
    paths = Workdir(workdir)
    return scored_from(read_manifest(workdir, target), _cleaned_digests(paths, target), configs,
                       test_set_sha256(workdir))


# --- eval_results/ files as score wrote them --------------------------------------------------------

def vouch_files(workdir: str | os.PathLike, previous: Optional[dict], written: Sequence[Path]) -> dict:
    """metrics.json's `files`: {path under the workdir: sha256} of every eval_results file score wrote now
    (and, for targets not scored now, what it recorded before), so report shows only what score wrote."""
    root = Path(workdir)
    out = dict(previous) if isinstance(previous, dict) else {}
    for path in written:
        if path.is_file():
            out[path.relative_to(root).as_posix()] = sha256_file(path)
    return out


def check_vouched(workdir: str | os.PathLike, path: Path) -> Path:
    """`path` (a file of eval_results/) unchanged since score wrote it, else one line: an edited score, a deleted
    row or an edited comparison must not reach a report."""
    if not path.is_file():  # a missing file is its reader's case (e.g. a target not scored yet)
        return path
    paths = Workdir(workdir)
    files = vouched_files(read_json_if_present(paths.metrics_json))
    key = path.relative_to(paths.root).as_posix()
    if not isinstance(files, dict) or key not in files:
        raise UserError(f"{path}: not vouched for by {paths.metrics_json.name} (written by another tunesweep or "
                        f"by hand); rerun `tunesweep score --config <config>`")
    if sha256_file(path) != files[key]:
        raise UserError(f"{path}: edited since score wrote it (its sha256 differs from {paths.metrics_json.name}'s); "
                        f"rerun `tunesweep score --config <config>` to rewrite it")
    return path


# --- tables ----------------------------------------------------------------------------------------

def format_cell(x, digits: int = 6, blank: str = "") -> str:
    """A table cell: `blank` for None or NaN, an integer as it is, another number with `digits` decimals."""
    import numpy as np

    if x is None or (isinstance(x, (float, np.floating)) and math.isnan(x)):
        return blank
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.{digits}f}"
    return str(x)


# A spreadsheet runs a cell that starts with one of these as a formula (tab and CR: some strip them first). Text
# cells so starting get a leading apostrophe, which spreadsheets show as text and sheet_text removes again; a
# text cell that starts with an apostrophe gets one more, so every text reads back as it was written.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def sheet_cell(text: str) -> str:
    """A text cell of a CSV a person opens, made inert. A number is no formula: -0.03 stays -0.03, also as text
    (a table row read back and written again, a response that is just a number)."""
    if text.startswith("'") or (text.startswith(FORMULA_STARTS) and not _is_number(text)):
        return "'" + text
    return text


def sheet_text(cell):
    """The text a sheet_cell was made from (anything that is not a string is returned as it is)."""
    return cell[1:] if isinstance(cell, str) and cell.startswith("'") else cell


class TableReader(csv.DictReader):
    """csv.DictReader over a table tunesweep wrote: every cell as sheet_text."""

    def __next__(self) -> dict:
        return {k: sheet_text(v) for k, v in super().__next__().items()}


def csv_text(columns: Sequence[str], rows: Sequence[dict], digits: int = 6) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([sheet_cell(v) if isinstance(v, str) else format_cell(v, digits)
                         for v in (row.get(c) for c in columns)])
    return buf.getvalue()


def write_table(path: Path, columns: Sequence[str], rows: Sequence[dict], digits: int = 6) -> None:
    """A CSV table (atomically): numbers with `digits` decimals, missing values blank."""
    write_text(path, csv_text(columns, rows, digits))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A Markdown table of already formatted cells; `|` and newlines in a cell cannot break it."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def read_rows(path: Path) -> list[dict]:
    """A CSV table as it is written: one dict of cell texts per row."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(TableReader(fh))


def read_frame(path: Path):
    """A table of eval_results/ (<target>.csv, perplexity.csv) as a pandas DataFrame (blank cells NaN)."""
    import pandas as pd

    frame = pd.read_csv(path)
    for column in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[column]):  # text (object, or pandas' str dtype)
            frame[column] = frame[column].map(sheet_text)
    return frame


def read_human(path: Path) -> dict[tuple[str, str], float]:
    """{(model, config): mean rating} from eval_results/human.csv, empty when there is none."""
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = TableReader(fh)
        needed = HUMAN_COLUMNS[:3]
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)} (written by `tunesweep human-eval import`)")
        out = {}
        for row, rec in enumerate(reader, 2):
            value = (rec["human"] or "").strip()
            if not value:
                continue
            try:
                out[(rec["model"], rec["config"])] = float(value)
            except ValueError:
                raise UserError(f"{path}: row {row}: human = {value!r}: not a number") from None
    return out
