"""Tables read as people have them (cnflow.cli.tables): header detection, quoted fields,
column selection, missing values and text cells, each mistake one exact line; and the
held-out scores of cnflow.cli.reference against independent formulas."""

import numpy as np
import pytest
from scipy import stats

from cnflow.cli.arguments import CLIError
from cnflow.cli.io import write_rows
from cnflow.cli.reference import (
    mean_and_se,
    mixture_log_density,
    mixture_reference,
    paired_difference,
)
from cnflow.cli.tables import read_table


def write(tmp_path, text: str, name: str = "t.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error(path, **options) -> str:
    with pytest.raises(CLIError) as info:
        read_table(path, **options)
    return str(info.value)


def test_a_header_line_is_detected_and_names_the_columns(tmp_path):
    path = write(tmp_path, "length_mm,width_mm\n4.5,1.0\n5.0,2.5\n")
    table = read_table(path)
    assert table.names == ("length_mm", "width_mm")
    assert table.values.tolist() == [[4.5, 1.0], [5.0, 2.5]]


def test_numeric_looking_headers(tmp_path):
    """A header with one non-number field is a header; one of numbers only is data unless
    header=True says otherwise; header=False reads a text first line as an error."""
    mixed = write(tmp_path, "x1,2.5\n1,2\n3,4\n", "mixed.csv")
    assert read_table(mixed).names == ("x1", "2.5")
    years = write(tmp_path, "2019,2020\n1.5,2\n3,4\n", "years.csv")
    assert read_table(years).names is None and len(read_table(years).values) == 3
    table = read_table(years, header=True)
    assert table.names == ("2019", "2020") and table.values.tolist() == [[1.5, 2], [3, 4]]
    assert error(mixed, header=False) == f"{mixed}, line 1, column 0: 'x1' is not a number"


def test_quoted_fields_spaces_comments_and_blank_lines(tmp_path):
    path = write(tmp_path, '# measured in 2026\n"length, mm", "width"\n\n"1.5", 2\n 3 ,"4e1"\n')
    table = read_table(path)
    assert table.names == ("length, mm", "width")
    assert table.values.tolist() == [[1.5, 2.0], [3.0, 40.0]]


def test_tab_and_semicolon_separated(tmp_path):
    tsv = write(tmp_path, "a\tb\n1\t2\n", "t.tsv")
    assert read_table(tsv).values.tolist() == [[1.0, 2.0]]
    semi = write(tmp_path, "a;b\n1;2\n3;4\n", "s.csv")
    assert read_table(semi).names == ("a", "b")


def test_a_stray_text_cell_is_named_by_line_column_and_value(tmp_path):
    path = write(tmp_path, "a,b\n1,2\n3,4\n5,oops\n")
    assert error(path) == f"{path}, line 4, column 'b': 'oops' is not a number"


def test_a_text_column_is_named_and_columns_skip_it(tmp_path):
    path = write(tmp_path, "length,species,width\n1,setosa,2\n3,virginica,4\n")
    assert error(path) == (f"{path}: column 'species' holds text ('setosa' on line 2), not "
                           "numbers; choose the numeric columns with --columns")
    table = read_table(path, columns=["width", "0"])
    assert table.names == ("width", "length") and table.values.tolist() == [[2, 1], [4, 3]]


def test_missing_values_are_counted_or_dropped(tmp_path):
    path = write(tmp_path, "a,b,c\n1,,3\n4,NA,6\n7,8,?\n10,11,12\n")
    assert error(path) == (f"{path} has 3 missing values in 3 rows (column 'b': 2, column "
                           "'c': 1); pass --dropna to drop those rows")
    table = read_table(path, dropna=True)
    assert table.values.tolist() == [[10, 11, 12]] and table.dropped == 3
    assert read_table(path, columns=["a"]).values.ravel().tolist() == [1, 4, 7, 10]
    assert error(write(tmp_path, "a\nNA\n", "m.csv"), dropna=True) == \
        f"{tmp_path / 'm.csv'} holds no rows without missing values"


def test_wrong_columns(tmp_path):
    path = write(tmp_path, "a,b\n1,2\n")
    assert error(path, columns=["c"]) == f"--columns: {path} has no column 'c' (its columns: a, b)"
    assert error(path, columns=["5"]) == \
        f"--columns: column index 5 is out of range: {path} has 2 columns (0 to 1)"
    assert error(path, columns=["a", "0"]) == "--columns names column '0' twice"
    bare = write(tmp_path, "1,2\n3,4\n", "bare.csv")
    assert error(bare, columns=["a"]) == (
        f"--columns: {bare} has no header line to name column 'a'; give 0-based indices (0 "
        "to 1), or --header if its first line names the columns")


def test_ragged_rows_infinite_values_and_duplicate_names(tmp_path):
    ragged = write(tmp_path, "a,b\n1,2\n3\n", "r.csv")
    assert error(ragged) == f"{ragged}, line 3: 1 fields where the first line has 2"
    inf = write(tmp_path, "a,b\n1,2\n3,inf\n", "i.csv")
    assert error(inf) == f"{inf}, line 3, column 'b': 'inf' is infinite"
    twice = write(tmp_path, "a,a\nx,1\n2,3\n", "d.csv")
    assert error(twice, header=True) == f"{twice}'s header names a column twice: a"


def test_numpy_files(tmp_path):
    X = np.arange(12.0).reshape(4, 3)
    np.save(tmp_path / "x.npy", X)
    mapped = read_table(tmp_path / "x.npy", mapped=True)
    assert isinstance(mapped.values, np.memmap) and mapped.names is None
    assert read_table(tmp_path / "x.npy", columns=["2", "0"]).values.tolist() == \
        X[:, [2, 0]].tolist()
    np.savez(tmp_path / "cols.npz", height=X[:, 0], weight=X[:, 1])
    table = read_table(tmp_path / "cols.npz", columns=["weight"])
    assert table.names == ("weight",) and table.values.ravel().tolist() == X[:, 1].tolist()
    np.savez(tmp_path / "bad.npz", a=X, b=X)
    assert error(tmp_path / "bad.npz") == (f"{tmp_path / 'bad.npz'} holds arrays a, b: a table "
                                           "is one 2-D array, or 1-D arrays of one length "
                                           "(its columns)")
    assert error(tmp_path / "x.npy", header=True) == \
        f"--header/--no-header are for text files; {tmp_path / 'x.npy'} is a .npy file"


def test_parquet_through_pandas(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame({"a": [1.0, None, 3.0], "label": ["x", "y", "z"], "b": [4, 5, 6]})
    frame.to_parquet(tmp_path / "t.parquet")
    table = read_table(tmp_path / "t.parquet", columns=["b", "a"], dropna=True)
    assert table.names == ("b", "a") and table.values.tolist() == [[4, 1], [6, 3]]
    assert error(tmp_path / "t.parquet", columns=["label"]) == (
        f"{tmp_path / 't.parquet'}: column 'label' holds text ('x' on row 0), not numbers; "
        "choose the numeric columns with --columns")


def test_written_rows_read_back_with_their_header(tmp_path):
    rows = np.random.default_rng(0).normal(size=(5, 2))
    write_rows(str(tmp_path / "s.csv"), rows, ["length, mm", "width"])
    table = read_table(tmp_path / "s.csv")
    assert table.names == ("length, mm", "width")
    np.testing.assert_array_equal(table.values, rows)  # %.17g: exact round trip


def test_mean_and_se_and_paired_difference_against_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=50), rng.normal(size=50)
    score = mean_and_se(a)
    assert score["rows"] == 50 and np.isclose(score["mean"], a.mean())
    assert np.isclose(score["se"], stats.sem(a))
    assert np.isclose(paired_difference(a, b)["se"], stats.sem(a - b))


def test_mixture_marginal_and_conditional_reference():
    """The marginal of a fitted mixture matches scipy's densities of the components'
    marginals; the conditional reference is log p(x, y) − log p(x) in the data's units."""
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(2)
    X = np.concatenate([rng.normal(size=(300, 3)), rng.normal(3, 0.5, size=(300, 3))])
    gm = GaussianMixture(2, random_state=0).fit(X)
    U = X[:7]
    expected = np.log(sum(w * stats.multivariate_normal(m[[0, 2]], c[np.ix_([0, 2], [0, 2])])
                          .pdf(U[:, [0, 2]])
                          for w, m, c in zip(gm.weights_, gm.means_, gm.covariances_,
                                             strict=True)))
    np.testing.assert_allclose(mixture_log_density(gm, U[:, [0, 2]], [0, 2]), expected)
    np.testing.assert_allclose(mixture_log_density(gm, U), gm.score_samples(U))
    scaled = X * [10.0, 1.0, 0.1]  # units: densities shift by −log scale
    joint, about = mixture_reference(scaled[::2], scaled[1::2][:20], seed=0)
    conditional, _ = mixture_reference(scaled[::2], scaled[1::2][:20], targets=[2], seed=0)
    assert about["components"] >= 1
    # the same mixture (same seed and rows): conditional = joint − marginal of columns 0, 1
    from cnflow.cli import reference

    rows = scaled[::2]
    mean, scale = rows.mean(axis=0), rows.std(axis=0)
    U = (scaled[1::2][:20] - mean) / scale
    marginal = joint - conditional  # = log p(x) in the data's units
    # p(x) integrates to one: its log-density is that of a proper 2-D mixture
    assert np.all(np.isfinite(marginal))
    assert reference.REFERENCE_ROWS >= len(rows)
    np.testing.assert_allclose(
        marginal + np.log(scale[:2]).sum(),
        logsumexp_components(joint_mixture(rows, 0), U[:, :2], [0, 1]), rtol=1e-10)


def joint_mixture(rows, seed):
    """The mixture mixture_reference fits to ``rows`` (standardised, same split)."""
    from cnflow.cli.reference import REFERENCE_COMPONENTS
    from cnflow.flows.base_density import select_gaussian_mixture

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    sample = rows[np.sort(order)]
    U = (sample - sample.mean(axis=0)) / sample.std(axis=0)
    rng.shuffle(U)
    n_val = len(U) // 5
    return select_gaussian_mixture(U[n_val:], U[:n_val], components=REFERENCE_COMPONENTS,
                                   random_state=seed)[0]


def logsumexp_components(mixture, U, columns):
    return np.log(sum(w * stats.multivariate_normal(m[columns], c[np.ix_(columns, columns)])
                      .pdf(U) for w, m, c in zip(mixture.weights_, mixture.means_,
                                                 mixture.covariances_, strict=True)))
