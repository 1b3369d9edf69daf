"""The study in MLflow: where it is logged, and the identities that make a rerun update the same runs.

`tracking.backend: none` (the default) never imports mlflow: everything here imports it inside functions,
and only when the backend is mlflow. The store is `tracking.uri`, by default one SQLite file in the workdir
(`sqlite:///<workdir>/mlflow.db`); an http(s) uri is a tracking server.

Every run carries the tag `tunesweep.key`, tunesweep's own identity of what it holds:
  study/<name>/<digest of the config (workdir, execution and tracking left out) and of the split's hashes>
  finetune/<model>/<the fine-tune's inputs fingerprint (tunesweep.json)>            a child of the study run
  eval/<target>/<config>/<the config's generation inputs (manifest.json)>           a child of the study run
Logging again looks the run up by that tag and adds only what it lacks, so a rerun adds no run; other inputs
are another key, so another run (MLflow's params cannot change once logged).

Logging never stops a stage: a store that cannot be reached costs one warning line (`failure_line`), the
stage's files are written as always, and `tunesweep track` pushes what is missing later.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import UserError
from .files import fingerprint, read_json

log = logging.getLogger(__name__)

KEY_TAG = "tunesweep.key"
KIND_TAG = "tunesweep.kind"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests a run under its parent
STORE_NAME = "mlflow.db"
# Retries with backoff of an unreachable server: MLflow's default (7, factor 2) waits about 4 minutes per
# call. A stage must not wait that long for a log line; a user who wants it sets the variables.
QUIET_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "30", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
NOISY_LOGGERS = ("mlflow", "alembic", "urllib3", "urllib3.connectionpool", "git")


@dataclass(frozen=True)
class RunRef:
    """One run in one store: what the training process gets to log its steps into (plain data)."""

    uri: str
    run_id: str


def enabled(cfg) -> bool:
    return cfg.tracking.backend == "mlflow"


def tracking_uri(cfg) -> str:
    """tracking.uri, or the SQLite file in the workdir (absolute: the training process and Ray workers run
    elsewhere)."""
    if cfg.tracking.uri:
        return cfg.tracking.uri
    return "sqlite:///" + str((Path(cfg.workdir) / STORE_NAME).resolve())


def experiment_name(cfg) -> str:
    return cfg.tracking.experiment or cfg.name


def require_mlflow(cfg) -> None:
    """Stop before any work when the config asks for MLflow and it is not installed (one line)."""
    if not enabled(cfg):
        return
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise UserError("tracking.backend = 'mlflow': the mlflow package is not installed "
                        "(the `tracking` extra: pip install -e '.[tracking]' or mlflow==3.17.2; or set tracking.backend: none)")


# Causes worth naming on their own: MLflow wraps them in a long message of the request and its retries.
KNOWN_CAUSES = ("Connection refused", "timed out", "Name or service not known", "No route to host",
                "database is locked")


def failure_line(uri: str, exc: BaseException) -> str:
    """The one warning line a failed log gives: where, why, and what to run later."""
    text = " ".join(str(exc).split())
    text = next((c.lower() for c in KNOWN_CAUSES if c in text), text[:200] or exc.__class__.__name__)
    return f"tracking: could not log to {uri} ({text}); the results are in the workdir's files, " \
           "`tunesweep track --config C` pushes them later"


def connect(uri: str):
    """An MlflowClient of `uri`, with MLflow's own output (alembic's migrations, urllib3's retry warnings,
    its 'View run' lines) kept out of tunesweep's log."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    from mlflow import MlflowClient

    for name in NOISY_LOGGERS:  # importing mlflow configures its logger: quiet it again
        logging.getLogger(name).setLevel(logging.ERROR)
    return MlflowClient(tracking_uri=uri)


def experiment_id(client, cfg) -> str:
    """The study's experiment, created on first use. A SQLite store keeps artifacts beside it in the workdir
    (MLflow's default would be ./mlruns of whatever directory the command ran in); a server keeps its own."""
    name = experiment_name(cfg)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    uri = tracking_uri(cfg)
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    # The UI then opens it on its runs (model training), not on the GenAI traces overview of MLflow 3.
    return client.create_experiment(name, artifact_location=location,
                                    tags={"mlflow.experimentKind": "custom_model_development"})


# --- identities ------------------------------------------------------------------------------------

# Not what a study is: where its files are, where it ran, where it is logged.
NOT_IDENTITY = {"workdir", "execution", "tracking"}


def study_settings(cfg) -> dict:
    return cfg.model_dump(mode="json", exclude=NOT_IDENTITY)


def split_hashes(workdir) -> dict:
    from .layout import Workdir

    try:
        meta = read_json(Workdir(workdir).split_meta)
    except (OSError, ValueError):
        return {}
    return {k: meta.get(k) for k in ("source_hash", "train_sha256", "test_sha256")}


def study_key(cfg) -> str:
    return f"study/{cfg.name}/{fingerprint([study_settings(cfg), split_hashes(cfg.workdir)])[:16]}"


def finetune_key(model: str, inputs_fingerprint: str) -> str:
    return f"finetune/{model}/{inputs_fingerprint[:16]}"


def eval_key(target: str, config: str, inputs: str) -> str:
    return f"eval/{target}/{config}/{inputs[:16]}"


def runs_by_key(client, exp_id: str) -> dict:
    """{tunesweep.key: run} of the experiment's active runs (the oldest when a key is there twice)."""
    out: dict = {}
    token = None
    while True:
        page = client.search_runs([exp_id], filter_string=f"tags.`{KEY_TAG}` LIKE '%'", max_results=1000,
                                  order_by=["attributes.start_time ASC"], page_token=token)
        for run in page:
            out.setdefault(run.data.tags[KEY_TAG], run)
        token = page.token
        if not token:
            return out


def open_run(client, exp_id: str, key: str, name: str, kind: str, parent_id: Optional[str] = None,
             known: Optional[dict] = None):
    """The run with this key (from `known`, else looked up), or a new one."""
    run = (known or {}).get(key)
    if run is None:
        found = client.search_runs([exp_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'", max_results=1,
                                   order_by=["attributes.start_time ASC"])
        run = found[0] if found else None
    if run is None:
        tags = {KEY_TAG: key, KIND_TAG: kind, **({PARENT_TAG: parent_id} if parent_id else {})}
        run = client.create_run(exp_id, tags=tags, run_name=name)
        if known is not None:
            known[key] = run
    return run


def open_finetune_run(cfg, model: str, inputs_fingerprint: str) -> Optional[RunRef]:
    """The fine-tune's run under the study's run, for the training process to log its steps into while it
    trains; None (after one warning line) when the store cannot be reached."""
    if not enabled(cfg):
        return None
    uri = tracking_uri(cfg)
    try:
        client = connect(uri)
        exp = experiment_id(client, cfg)
        study = open_run(client, exp, study_key(cfg), cfg.name, "study")
        run = open_run(client, exp, finetune_key(model, inputs_fingerprint), f"finetune {model}", "finetune",
                       parent_id=study.info.run_id)
        return RunRef(uri, run.info.run_id)
    except Exception as exc:  # noqa: BLE001 - logging never stops a stage
        log.warning(failure_line(uri, exc))
        return None


class StepLogger:
    """Logs a training process's steps into its run from a thread of its own, so that neither importing mlflow
    nor a slow server holds a training step up. After the first failure it warns once and drops the rest (the
    push after training fills in what is missing)."""

    def __init__(self, ref: RunRef):
        import queue
        import threading

        self.ref = ref
        self.pending: "queue.Queue" = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="tunesweep-tracking", daemon=True)
        self.thread.start()

    def log(self, metrics: dict, step: int) -> None:
        import time

        self.pending.put(({k: float(v) for k, v in metrics.items() if v is not None}, int(step),
                          int(time.time() * 1000)))

    def close(self, timeout: float = 60.0) -> None:
        """Wait (at most `timeout` seconds) until every step handed over so far is logged."""
        self.pending.put(None)
        self.thread.join(timeout)

    def _run(self) -> None:
        failed = False
        client = None
        while True:
            item = self.pending.get()
            if item is None:
                return
            if failed:
                continue
            metrics, step, when = item
            try:
                from mlflow.entities import Metric

                client = client or connect(self.ref.uri)
                client.log_batch(self.ref.run_id, metrics=[Metric(k, v, when, step) for k, v in metrics.items()])
            except Exception as exc:  # noqa: BLE001 - a dead server must not stop training
                failed = True
                log.warning(failure_line(self.ref.uri, exc))
