"""The split stage: a dataset (hub id, local file or builtin:tasks) -> alpaca_data/.

sources.py reads and checks records; split.py holds out the test rows and writes the files;
builtin.py is the embedded offline dataset (`builtin:tasks`).
"""

from ..layout import load_split  # alpaca_data/ is read through the layout module; re-exported for callers
from .sources import load_usable_records
from .split import split_dataset, split_for_config

__all__ = ["load_split", "load_usable_records", "split_dataset", "split_for_config"]
