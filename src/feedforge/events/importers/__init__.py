"""Import real datasets into feedforge's own event log and catalog.

``import_dataset(source, path, workdir)`` reads one of :data:`SOURCES`, validates every file
(a malformed one raises :class:`~feedforge.errors.ValidationError` naming the file, the line
and what was expected) and writes the same artifacts the simulator writes:

* events: each interaction row becomes one event. Rows with a rating become ``rating``
  events whose ``value`` is the rating; rows without one (``user-item-text``, or a generic table
  without a rating column) become ``click`` events, the log's implicit positive. Timestamps are
  UTC. ``event_id`` is derived from the content (``source:user:item:unix_seconds[:rating]``),
  so exact duplicate rows are stored once and counted in :attr:`ImportSummary.duplicates`.
* catalog: one item per id of the item file or the interactions (title, genres as
  ``categories``, ``created_at`` = the earlier of release date and first interaction), one user
  per id of the user file or the interactions (``created_at`` = first interaction,
  ``age_bucket`` where the source has ages). The catalog manifest records the source, the path
  and the counts.

Readers live in :mod:`.movielens` / :mod:`.movielens_meta` (the GroupLens releases) and
:mod:`.generic` (CSV, Parquet, ``user item`` text); :mod:`.text` (files, rules, errors with line
numbers) and :mod:`.fields` (ids, numbers, timestamps) are shared; :mod:`.core` converts and
writes.
"""

from feedforge.events.importers.core import SOURCES, ImportSummary, import_dataset

__all__ = ["SOURCES", "ImportSummary", "import_dataset"]
