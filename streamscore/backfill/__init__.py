"""``streamscore backfill``: re-score a topic's time range (or a Parquet/CSV file) at full speed.

See ``streamscore.backfill.run`` for the data path and the exactly-once argument.
"""

from streamscore.backfill.args import BackfillArgs, BackfillResult, parse_model, parse_time
from streamscore.backfill.parquet import concat_parts
from streamscore.backfill.progress import Progress, terminal_progress
from streamscore.backfill.run import run_backfill
from streamscore.backfill.sources import FileRows, TopicRange
from streamscore.backfill.state import State

__all__ = ["BackfillArgs", "BackfillResult", "FileRows", "Progress", "State", "TopicRange", "concat_parts",
           "parse_model", "parse_time", "run_backfill", "terminal_progress"]
