"""The dataset build on Apache Spark: the files of :mod:`feedforge.datasets.build`, row for row.

``feedforge build --engine spark`` (or ``dataset.engine: spark``) runs the heavy part of the
build, every join and aggregation over the event log, as Spark SQL on ``dataset.spark_master``
(``local[*]`` by default; a cluster URL when the log outgrows one host, with the workdir on
storage every executor reads). It writes the same dataset artifact as the polars build: the
temporal split, the id maps, positives per kind, point-in-time ranking examples with their
labels, the feature snapshot at ``t2``, the test window's outcomes, the card and the manifest.

How each polars step maps to Spark:

* The as-of joins of :func:`~feedforge.features.offline.point_in_time_counters` ("events of
  the same key strictly before this impression") become running sums: impressions and the
  counted events are unioned, partitioned by the key, ordered by the timestamp in
  microseconds, and summed over the range frame ``[-inf, t - 1 µs]``. A count over the last
  ``w`` is the running sum at ``t`` minus the running sum at a probe row the impression adds
  at ``t - w`` (as the polars build subtracts two as-of counts; a sliding frame would be
  re-aggregated by Spark row by row). One pass per key (user, item, user x category); the
  user's last device is ``last(..., ignorenulls)`` over the user pass's frame.
* Everything else (labels, flags, snapshot, outcomes) is a join or a group-by.

Spark writes each file as sorted part files in a staging folder; the driver then streams the
parts, in order, into the artifact's single Parquet file, cast to the schema the polars build
writes (derived from the polars definitions themselves, so the two cannot drift apart). The
id maps are fitted on the driver from the distinct train ids Spark returns (their size is the
number of users and items, not of events), with the same code as the polars build. The card
and the manifest are written by :func:`~feedforge.datasets.build.finish_build` for both.
"""

from __future__ import annotations

import contextlib
import operator
import os
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import TYPE_CHECKING, Any

import polars as pl

from feedforge.artifacts import Manifest
from feedforge.config import DatasetConfig, Settings
from feedforge.datasets.build import (
    SNAPSHOT_FRAMES,
    SPLITS,
    BuildSummary,
    bounds_from_span,
    finish_build,
    label_positives,
    observed_outcomes,
    ranking_examples,
    write_item_categories,
)
from feedforge.datasets.idmap import IdMap
from feedforge.errors import ConfigError
from feedforge.events.catalog import read_catalog
from feedforge.events.log import EventLog
from feedforge.events.schema import EVENT_SCHEMA, ITEM_SCHEMA
from feedforge.features.definitions import DEVICE_CODES, SERVING_POSITION, WINDOWS
from feedforge.features.offline import item_categories, snapshot_counters
from feedforge.workdir import Workdir

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

STAGING = ".spark-staging"
"""The folder of ``WORKDIR/dataset`` Spark writes its part files to (removed at the end)."""

LOCAL_SHUFFLE_PARTITIONS = 16
"""``spark.sql.shuffle.partitions`` on a ``local`` master unless ``dataset.spark_conf`` sets
it: Spark's 200 are tuned for clusters; on a few cores they are mostly scheduling overhead."""

_WEIGHTS = {"click": 1.0, "watch": 2.0, "like": 2.0, "purchase": 3.0, "rating": 1.0}
_US = 1_000_000
Progress = Callable[[str], None]


def spark_session(config: DatasetConfig, master: str | None = None) -> SparkSession:
    """A Spark session for the build: UTC, microsecond Parquet timestamps, no web UI.

    Raises:
        ConfigError: PySpark is not installed, or no Java runtime is found.
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise ConfigError(
            "dataset.engine spark needs PySpark: pip install 'feedforge[spark]'"
        ) from exc
    if not os.environ.get("JAVA_HOME") and shutil.which("java") is None:
        raise ConfigError(
            "dataset.engine spark needs a Java 17+ runtime (java on PATH or JAVA_HOME); on "
            "Debian: apt-get install openjdk-17-jre-headless"
        )
    master = master or config.spark_master
    builder = (
        SparkSession.builder.master(master)
        .appName("feedforge-build")
        .config("spark.driver.memory", config.spark_driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.sql.parquet.compression.codec", "zstd")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
    if master.startswith("local") and "spark.sql.shuffle.partitions" not in config.spark_conf:
        builder = builder.config("spark.sql.shuffle.partitions", str(LOCAL_SHUFFLE_PARTITIONS))
    for key, value in config.spark_conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def build_dataset_spark(
    workdir: Workdir,
    settings: Settings,
    progress: Progress | None = None,
    master: str | None = None,
    spark: SparkSession | None = None,
) -> Manifest:
    """Build every dataset file of ``workdir`` on Spark (see the module docs).

    Args:
        workdir: Holds the event log and the catalog; the dataset is written to its
            ``dataset`` folder.
        settings: The configuration (``dataset`` section: the split, labels and Spark).
        progress: Called with a line per step.
        master: Overrides ``dataset.spark_master``.
        spark: A session to run on, left running. By default the process's active session
            if it has one (a notebook's; left running too), else one is started from
            ``dataset`` and stopped at the end.

    Returns:
        The manifest of the written dataset.

    Raises:
        ConfigError: PySpark or Java is missing.
        feedforge.errors.ArtifactError: the catalog is missing.
        feedforge.errors.DataError: the log is empty or too short for the configured split.
    """
    say = progress or (lambda _msg: None)
    log = EventLog(workdir.events_dir)
    if spark is None:
        with contextlib.suppress(ImportError):
            from pyspark.sql import SparkSession

            spark = SparkSession.getActiveSession()
    own = spark is None
    if spark is None:
        say(f"starting Spark ({master or settings.dataset.spark_master})")
        session = spark_session(settings.dataset, master)
    else:
        say(f"on the running Spark session ({spark.sparkContext.master})")
        session = spark
    try:
        with log.reading():  # no compaction removes a file of the log while Spark reads it
            return _SparkBuild(session, workdir, settings, say, log).run()
    finally:
        if own:
            session.stop()


class _SparkBuild:
    """One build: the session, the inputs and the staging folder."""

    def __init__(
        self,
        spark: SparkSession,
        workdir: Workdir,
        settings: Settings,
        say: Progress,
        log: EventLog,
    ) -> None:
        self.spark = spark
        self.settings = settings
        self.config = settings.dataset
        self.say = say
        self.log = log
        self.workdir = workdir
        self.out = workdir.dataset_dir
        self.staging = self.out / STAGING

    # -- the steps ---------------------------------------------------------------------------

    def run(self) -> Manifest:
        from pyspark.sql import functions as F

        catalog_manifest, items, _users = read_catalog(self.workdir)
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)
        try:
            # Read and de-duplicated once: every later step reads this copy.
            events = self._stage_spark("events", self._events())
            span = events.agg(F.min("ts").alias("start"), F.max("ts").alias("end")).collect()
            bounds = bounds_from_span(_time(span[0]["start"]), _time(span[0]["end"]), self.config)
            cats = self._stage_polars("catalog", _catalog_columns(items))
            schemas = reference_schemas(self.config, bounds["t2"])

            self.say("fitting id maps on the train split")
            train = events.filter(F.col("ts") < _micros(bounds["t1"]))
            users = IdMap.fit(self._distinct(train, "user_id"))
            item_map = IdMap.fit(self._distinct(train, "item_id"))
            users.save(self.out / "ids" / "users.parquet")
            item_map.save(self.out / "ids" / "items.parquet")
            write_item_categories(self.out, item_map, items)
            idx = {
                "user": self._stage_polars("user_idx", _idx_frame(users, "user")),
                "item": self._stage_polars("item_idx", _idx_frame(item_map, "item")),
            }

            def with_idx(frame: DataFrame) -> DataFrame:
                return frame.join(idx["user"], "user_id", "left").join(
                    idx["item"], "item_id", "left"
                )

            self.say("labelling positives")
            positives = with_idx(self._positives(events, cats).withColumn("split", _split(bounds)))
            self._write_splits("positives", positives, ["timestamp", "event_id"], schemas)

            self.say("computing point-in-time ranking examples")
            ranking = self._ranking(events, cats).withColumn("split", _split(bounds))
            impressions = self._stage_spark("impressions", with_idx(ranking))
            kept = impressions.filter(_boundary_ok(bounds, self.config))
            self._write_splits(
                "ranking", kept, ["timestamp", "request_id", "position", "event_id"], schemas
            )
            censored = impressions.count() - kept.count()

            counts: dict[str, int] = {}
            self.say("snapshotting features and outcomes of the test window")
            for name, frame in zip(
                SNAPSHOT_FRAMES, self._snapshot(events, cats, bounds["t2"]), strict=True
            ):
                key = [c for c in ("user_id", "item_id", "category") if c in frame.columns]
                counts[f"snapshot_{name}"] = self._write(
                    f"snapshot/{name}", frame.orderBy(*key), schemas[f"snapshot_{name}"]
                )
            outcomes = with_idx(self._outcomes(events, bounds))
            counts["outcomes_test"] = self._write(
                "outcomes_test",
                outcomes.orderBy("user_id", "item_id"),
                schemas["outcomes_test"],
            )
            n_events = events.count()
        finally:
            shutil.rmtree(self.staging, ignore_errors=True)
        summary = BuildSummary.of(
            bounds,
            (users, item_map),
            items,
            events=n_events,
            censored=censored,
            inputs={
                "catalog": catalog_manifest.version,
                "events": f"{len(self.log.files())} files",
            },
            engine=f"spark {self.spark.version} ({self.spark.sparkContext.master})",
        )
        return finish_build(self.out, self.settings, summary, counts)

    def _events(self) -> DataFrame:
        """The log's events, unique on ``event_id``, plus ``ts`` (microseconds since the
        epoch, the order and range key of every window below)."""
        from pyspark.sql import functions as F

        files = [str(f) for f in self.log.files()]
        if not files:
            return self.spark.createDataFrame([], _spark_schema(EVENT_SCHEMA)).withColumn(
                "ts", F.lit(None).cast("long")
            )
        frame = self.spark.read.schema(_spark_schema(EVENT_SCHEMA)).parquet(*files)
        return (
            frame.select(*EVENT_SCHEMA)
            .dropDuplicates(["event_id"])
            .withColumn("ts", F.unix_micros("timestamp"))
        )

    def _positives(self, events: DataFrame, cats: DataFrame) -> DataFrame:
        """:func:`~feedforge.datasets.build.label_positives` in Spark."""
        from pyspark.sql import functions as F

        et = F.col("event_type")
        dur = F.col("duration_seconds")
        watch_ok = F.when(dur.isNull(), F.col("watch_seconds") > 0).otherwise(
            F.col("watch_seconds") >= F.lit(self.config.watch_completion) * dur
        )
        flagged = events.join(cats.select("item_id", "duration_seconds"), "item_id", "left")
        flags = {
            "click": et == "click",
            "watch": (et == "watch") & F.coalesce(watch_ok, F.lit(False)),
            "like": et == "like",
            "purchase": et == "purchase",
            "rated": F.coalesce(
                (et == "rating") & (F.col("value") >= self.config.rating_threshold), F.lit(False)
            ),
        }
        for name, flag in flags.items():
            flagged = flagged.withColumn(name, flag)
        weight = F.lit(0.0)
        for kind, w in reversed(_WEIGHTS.items()):
            weight = F.when(et == kind, F.lit(w)).otherwise(weight)
        return (
            flagged.filter(reduce(operator.or_, (F.col(k) for k in flags)))
            .withColumn("weight", weight.cast("float"))
            .select(
                "event_id",
                "timestamp",
                "ts",
                "user_id",
                "item_id",
                "event_type",
                *flags,
                "weight",
            )
        )

    def _ranking(self, events: DataFrame, cats: DataFrame) -> DataFrame:
        """:func:`~feedforge.datasets.build.ranking_examples` in Spark: one row per
        impression with its point-in-time counters and attributed labels."""
        from pyspark.sql import functions as F

        et = F.col("event_type")
        impressions = events.filter(et == "impression").select(
            "event_id", "request_id", "timestamp", "ts", "user_id", "item_id", "position", "device"
        )
        window_us = self.config.attribution_seconds * _US
        outcomes = events.filter(et.isin("click", "watch", "like", "purchase")).select(
            "request_id",
            "user_id",
            "item_id",
            F.col("ts").alias("label_ts"),
            "event_type",
            "watch_seconds",
            "price",
        )
        labels = (
            impressions.select("event_id", "request_id", "user_id", "item_id", "ts")
            .join(outcomes, ["request_id", "user_id", "item_id"], "inner")
            .filter(
                (F.col("label_ts") >= F.col("ts")) & (F.col("label_ts") < F.col("ts") + window_us)
            )
            .groupBy("event_id")
            .agg(
                F.max(et == "click").alias("clicked"),
                F.coalesce(F.sum(F.when(et == "watch", F.col("watch_seconds"))), F.lit(0.0)).alias(
                    "watch_seconds"
                ),
                F.max(et == "like").alias("liked"),
                F.max(et == "purchase").alias("purchased"),
                F.coalesce(F.sum(F.when(et == "purchase", F.col("price"))), F.lit(0.0)).alias(
                    "revenue"
                ),
            )
        )
        examples = (
            self._counters(impressions, events, cats)
            .join(labels, "event_id", "left")
            .join(cats.select("item_id", "duration_seconds"), "item_id", "left")
            .fillna({"clicked": False, "liked": False, "purchased": False})
            .fillna({"watch_seconds": 0.0, "revenue": 0.0})
        )
        dur = F.col("duration_seconds")
        watched = F.when(dur.isNull(), F.col("watch_seconds") > 0).otherwise(
            F.col("watch_seconds") >= F.lit(self.config.watch_completion) * dur
        )
        return examples.withColumn("watched", watched).drop("duration_seconds")

    def _counters(self, impressions: DataFrame, events: DataFrame, cats: DataFrame) -> DataFrame:
        """:func:`~feedforge.features.offline.point_in_time_counters` as window aggregates
        (see the module docs)."""
        from pyspark.sql import functions as F

        et = F.col("event_type")
        left = (
            impressions.join(
                cats.select(
                    "item_id", "category", "created_at", "item_duration_seconds", "item_price"
                ),
                "item_id",
                "left",
            )
            .fillna({"category": "", "item_duration_seconds": 0.0, "item_price": 0.0})
            .withColumn("_left", F.lit(True))
        )
        counted = events.filter(et.isin("impression", "click")).select(
            "user_id",
            "item_id",
            "ts",
            (et == "impression").cast("long").alias("_imp"),
            (et == "click").cast("long").alias("_clk"),
        )
        devices = (
            events.filter((et == "impression") & F.col("device").isNotNull())
            .groupBy("user_id", "ts")
            .agg(F.max(_device_code(F.col("device"))).alias("_dev"))
        )
        # Pass 1, by user: impressions, clicks (all time and windowed) and the last device.
        frame = _counts_before(
            _union(left, counted.drop("item_id"), devices),
            ["user_id"],
            "user",
            extra={"_last_device": F.last("_dev", ignorenulls=True)},
        ).drop("_imp", "_clk", "_dev")
        # Pass 2, by item.
        frame = _counts_before(_union(frame, counted.drop("user_id")), ["item_id"], "item")
        frame = frame.drop("_imp", "_clk")
        # Pass 3, by user x the item's primary category: clicks only, all time.
        clicks = (
            counted.filter(F.col("_clk") == 1)
            .join(cats.select("item_id", "category"), "item_id", "left")
            .fillna({"category": ""})
            .drop("item_id")
        )
        frame = _union(frame, clicks)
        frame = frame.withColumn(
            "user_category_clicks",
            F.coalesce(F.sum("_clk").over(_before(["user_id", "category"])), F.lit(0)),
        ).filter(F.col("_left"))
        requested = _device_code(F.col("device"))
        return frame.select(
            *(c for c in frame.columns if not c.startswith("_") and c != "created_at"),
            F.coalesce(
                (F.col("ts") - F.unix_micros("created_at")) / F.lit(float(_US)), F.lit(0.0)
            ).alias("item_age_seconds"),
            F.hour("timestamp").cast("long").alias("hour"),
            F.when(requested > 0, requested)
            .otherwise(F.coalesce(F.col("_last_device"), F.lit(0)))
            .alias("device_code"),
        ).fillna({"position": SERVING_POSITION})

    def _snapshot(
        self, events: DataFrame, cats: DataFrame, cutoff: datetime
    ) -> tuple[DataFrame, DataFrame, DataFrame]:
        """:func:`~feedforge.features.offline.snapshot_counters` in Spark."""
        from pyspark.sql import functions as F

        et = F.col("event_type")
        cut = _micros(cutoff)
        before = events.filter(F.col("ts") < cut)
        imp = (et == "impression").cast("long")
        clk = (et == "click").cast("long")

        def sums(prefix: str) -> list[Column]:
            exprs = []
            for suffix, length in WINDOWS.items():
                recent = F.col("ts") >= cut - int(length / timedelta(microseconds=1))
                for kind, name in ((imp, "impressions"), (clk, "clicks")):
                    hits = F.sum(F.when(recent, kind).otherwise(0))
                    exprs.append(hits.alias(f"{prefix}_{name}_{suffix}"))
            return exprs

        last_device = (
            before.filter((et == "impression") & F.col("device").isNotNull())
            .groupBy("user_id", "ts")
            .agg(F.max(_device_code(F.col("device"))).alias("_dev"))
            .groupBy("user_id")
            .agg(F.max_by("_dev", "ts").alias("user_last_device"))
        )
        users = (
            before.groupBy("user_id")
            .agg(
                F.sum(imp).alias("user_impressions"),
                F.sum(clk).alias("user_clicks"),
                *sums("user"),
            )
            .join(last_device, "user_id", "left")
            .fillna({"user_last_device": 0})
        )
        item_counts = before.groupBy("item_id").agg(
            F.sum(imp).alias("item_impressions"), F.sum(clk).alias("item_clicks"), *sums("item")
        )
        counted = [c for c in item_counts.columns if c != "item_id"]
        items = (
            cats.select("item_id", "category", "created_at", "item_duration_seconds", "item_price")
            .join(item_counts, "item_id", "full")
            .fillna({"category": "", "item_duration_seconds": 0.0, "item_price": 0.0})
            .fillna(0, subset=counted)
        )
        user_categories = (
            before.filter(et == "click")
            .join(cats.select("item_id", "category"), "item_id", "left")
            .fillna({"category": ""})
            .groupBy("user_id", "category")
            .agg(F.count(F.lit(1)).alias("user_category_clicks"))
        )
        return users, items, user_categories

    def _outcomes(self, events: DataFrame, bounds: dict[str, datetime]) -> DataFrame:
        """:func:`~feedforge.datasets.build.observed_outcomes` in Spark."""
        from pyspark.sql import functions as F

        et = F.col("event_type")
        window = (F.col("ts") >= _micros(bounds["t2"])) & (F.col("ts") <= _micros(bounds["end"]))
        return (
            events.filter(window & et.isin("click", "watch", "purchase"))
            .groupBy("user_id", "item_id")
            .agg(
                F.sum((et == "click").cast("long")).alias("clicks"),
                F.coalesce(F.sum(F.when(et == "watch", F.col("watch_seconds"))), F.lit(0.0)).alias(
                    "watch_seconds"
                ),
                F.coalesce(F.sum(F.when(et == "purchase", F.col("price"))), F.lit(0.0)).alias(
                    "revenue"
                ),
            )
        )

    # -- input and output --------------------------------------------------------------------

    def _distinct(self, frame: DataFrame, column: str) -> pl.Series:
        table = frame.select(column).distinct().toArrow()
        return pl.Series(column, table.column(column), dtype=pl.String)

    def _stage_polars(self, name: str, frame: pl.DataFrame) -> DataFrame:
        """A driver-side frame (the catalog, an id map) handed to Spark as a Parquet file."""
        path = self.staging / f"{name}.parquet"
        frame.write_parquet(path)
        return self.spark.read.parquet(str(path))

    def _stage_spark(self, name: str, frame: DataFrame) -> DataFrame:
        """Compute ``frame`` once into the staging folder and read it back (the later steps
        filter and sort it several times)."""
        path = self.staging / name
        frame.write.mode("overwrite").parquet(str(path))
        return self.spark.read.parquet(str(path))

    def _write_splits(
        self, name: str, frame: DataFrame, order: list[str], schemas: dict[str, pl.Schema]
    ) -> None:
        from pyspark.sql import functions as F

        staged = self._stage_spark(f"{name}_all", frame)
        for split in SPLITS:
            part = staged.filter(F.col("split") == split).orderBy(*order)
            self._write(f"{name}_{split}", part, schemas[name])

    def _write(self, name: str, frame: DataFrame, schema: pl.Schema) -> int:
        """Write ``frame`` (sorted) as ``WORKDIR/dataset/<name>.parquet``: Spark's part
        files, in order, streamed into one file cast to ``schema``. Returns the rows."""
        parts_dir = self.staging / "parts" / name
        frame.write.mode("overwrite").parquet(str(parts_dir))
        parts = sorted(parts_dir.glob("part-*.parquet"))
        target = self.out / f"{name}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        rows = 0
        if parts:
            scan = pl.scan_parquet(parts, hive_partitioning=False)
            rows = int(scan.select(pl.len()).collect().item())
        if rows:
            scan.select(pl.col(c).cast(t) for c, t in schema.items()).sink_parquet(
                target, compression="zstd"
            )
        else:
            pl.DataFrame(schema=schema).write_parquet(target, compression="zstd")
        shutil.rmtree(parts_dir, ignore_errors=True)
        return rows


def reference_schemas(config: DatasetConfig, cutoff: datetime) -> dict[str, pl.Schema]:
    """The schema of each file the polars build writes, from the polars definitions applied
    to empty frames (no data is read): the Spark build casts its output to them."""
    events = pl.LazyFrame(schema=EVENT_SCHEMA)
    items = pl.DataFrame(schema=ITEM_SCHEMA)
    idx = {"user_idx": pl.Int32(), "item_idx": pl.Int32()}
    positives = label_positives(events, items, config).collect_schema()
    ranking = ranking_examples(events, items, config).collect_schema()
    outcomes = observed_outcomes(events, {"t2": cutoff, "end": cutoff}).collect_schema()
    schemas = {
        "positives": pl.Schema({**positives, **idx}),
        "ranking": pl.Schema({**ranking, **idx}),
        "outcomes_test": pl.Schema({**outcomes, **idx}),
    }
    for name, frame in zip(SNAPSHOT_FRAMES, snapshot_counters(events, items, cutoff), strict=True):
        schemas[f"snapshot_{name}"] = frame.schema
    return schemas


def _union(*frames: DataFrame) -> DataFrame:
    out = frames[0]
    for frame in frames[1:]:
        out = out.unionByName(frame, allowMissingColumns=True)
    return out


def _before(by: list[str]) -> Any:
    """The window of the rows of the same ``by`` keys strictly before this row's timestamp
    (ordered by the timestamp in microseconds: ``[-inf, t - 1 µs]``)."""
    from pyspark.sql import Window

    return Window.partitionBy(*by).orderBy("ts").rangeBetween(Window.unboundedPreceding, -1)


def _counts_before(
    frame: DataFrame, by: list[str], prefix: str, extra: dict[str, Column] | None = None
) -> DataFrame:
    """The impressions (``_left`` rows) of ``frame`` with ``<prefix>_impressions`` and
    ``<prefix>_clicks``, counted from its ``_imp``/``_clk`` rows of the same ``by`` keys
    strictly before each impression, their windowed counts (see
    :data:`~feedforge.features.definitions.WINDOWS`) and the ``extra`` aggregates over the
    same all-time frame.

    The all-time counts are running sums (linear after the sort). A windowed count is not a
    sliding frame, which Spark re-aggregates whenever a row leaves it (quadratic on a busy
    item), but, as in the polars build, the count before ``t`` minus the count before
    ``t - w``: each impression adds a probe row at ``t - w`` whose running sums are read back
    by ``event_id``.
    """
    from pyspark.sql import functions as F

    before = _before(by)
    probes = [
        frame.filter(F.col("_left")).select(
            *by,
            "event_id",
            (F.col("ts") - int(length / timedelta(microseconds=1))).alias("ts"),
            F.lit(suffix).alias("_probe"),
        )
        for suffix, length in WINDOWS.items()
    ]
    counts = {f"{prefix}_impressions": "_imp", f"{prefix}_clicks": "_clk"}
    summed = _union(frame, *probes).select(
        "*",
        *(
            F.coalesce(F.sum(flag).over(before), F.lit(0)).alias(name)
            for name, flag in counts.items()
        ),
        *(expr.over(before).alias(name) for name, expr in (extra or {}).items()),
    )
    probed = (
        summed.filter(F.col("_probe").isNotNull())
        .groupBy("event_id")
        .agg(
            *(
                F.max(F.when(F.col("_probe") == suffix, F.col(name))).alias(f"_{name}_{suffix}")
                for suffix in WINDOWS
                for name in counts
            )
        )
    )
    rows = summed.filter(F.col("_left") & F.col("_probe").isNull()).join(probed, "event_id", "left")
    for suffix in WINDOWS:
        for name in counts:
            rows = rows.withColumn(
                f"{name}_{suffix}", F.col(name) - F.coalesce(F.col(f"_{name}_{suffix}"), F.lit(0))
            )
    return rows.drop("_probe", *(f"_{name}_{suffix}" for suffix in WINDOWS for name in counts))


def _device_code(device: Column) -> Column:
    """:func:`~feedforge.features.definitions.device_code` in Spark."""
    from pyspark.sql import functions as F

    code = F.lit(0)
    for name, value in DEVICE_CODES.items():
        code = F.when(device == name, F.lit(value)).otherwise(code)
    return code.cast("long")


def _split(bounds: dict[str, datetime]) -> Column:
    from pyspark.sql import functions as F

    return (
        F.when(F.col("ts") < _micros(bounds["t1"]), "train")
        .when(F.col("ts") < _micros(bounds["t2"]), "validation")
        .otherwise("test")
    )


def _boundary_ok(bounds: dict[str, datetime], config: DatasetConfig) -> Column:
    """Impressions whose attribution window stays inside their split and the log (the
    polars build's filter, in microseconds)."""
    from pyspark.sql import functions as F

    ts, window = F.col("ts"), config.attribution_seconds * _US
    ok = F.lit(True)
    for edge in (_micros(bounds["t1"]), _micros(bounds["t2"])):
        ok = ok & ~((ts < edge) & (ts + window > edge))
    return ok & (ts + window <= _micros(bounds["end"]) + 1)


def _catalog_columns(items: pl.DataFrame) -> pl.DataFrame:
    """The catalog columns the build joins: the raw duration (labels) and
    :func:`~feedforge.features.offline.item_categories` (counters)."""
    return item_categories(items).join(
        items.select("item_id", "duration_seconds"), on="item_id", how="left"
    )


def _idx_frame(ids: IdMap, kind: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            f"{kind}_id": ids.ids,
            f"{kind}_idx": pl.int_range(0, len(ids), dtype=pl.Int32, eager=True),
        }
    )


def _micros(at: datetime) -> int:
    return (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _time(micros: int | None) -> datetime | None:
    return (
        None
        if micros is None
        else datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    )


def _spark_schema(schema: dict[str, pl.DataType]) -> Any:
    """A Spark ``StructType`` of a polars schema (the event log's types only)."""
    from pyspark.sql import types as T

    kinds = {
        pl.String: T.StringType(),
        pl.Float64: T.DoubleType(),
        pl.Int32: T.IntegerType(),
        pl.Int64: T.LongType(),
        pl.Datetime: T.TimestampType(),
    }
    fields = []
    for name, dtype in schema.items():
        base = dtype.base_type()
        if base not in kinds:
            raise ConfigError(f"no Spark type for the event log's column {name} ({dtype})")
        fields.append(T.StructField(name, kinds[base], True))
    return T.StructType(fields)
