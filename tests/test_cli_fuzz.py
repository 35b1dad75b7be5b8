"""Property-based test of the CLI's promise (issue 16): for generated bad arguments to every verb, the real
CLI (in-process) exits with code 2, prints exactly one line on stderr and no traceback, and leaves the run
store byte-identical.

Every generated argv holds one bad value (or one unknown option) among otherwise valid ones; bad values are
rejected before any data is loaded or any work starts, which keeps hundreds of cases fast.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli_regressions import invoke, snapshot

from flatminima.store import Store
from flatminima.train import TrainConfig

RUN = "fuzz-train-run"  # a finished training run in the fixture store


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-store")
    store = Store(root)
    run = store.create_run("train", TrainConfig(data="digits", model="mlp:8", steps=4).to_dict(), run_id=RUN)
    store.set_status(run.id, "finished")
    return root


# ------------------------------------------------------------------------------------------ bad values
def _text(alphabet: str) -> st.SearchStrategy[str]:
    """Words that are no number and no valid name (the alphabets avoid every real name's letters)."""
    return st.text(alphabet=alphabet, min_size=1, max_size=8).filter(lambda s: not s.startswith("-"))


NOT_A_NUMBER = st.sampled_from(["abc", "1.5.2", "one", "0x", "--", "1e", "[]"]) | _text("qwzQWZ!@")
NOT_FINITE = st.sampled_from(["nan", "inf", "-inf", "NaN", "Infinity"])


def _num(x: float) -> str:
    return repr(float(x)) if isinstance(x, float) else str(x)


def bad_int(minimum: int) -> st.SearchStrategy[str]:
    """An integer option below ``minimum``, or no integer at all."""
    return st.integers(max_value=minimum - 1, min_value=-10**12).map(str) | NOT_A_NUMBER | st.sampled_from(["1.5", "nan"])


def bad_float(low: float, high: float | None = None, *, low_open: bool = False,
              high_open: bool = False) -> st.SearchStrategy[str]:
    """A number outside the valid interval from ``low`` to ``high`` (ends closed unless ``*_open``), a value
    that is not finite, or no number at all."""
    below = st.floats(min_value=-1e12, max_value=low, allow_nan=False)
    out = below.filter(lambda x: x < low or (low_open and x == low)).map(_num) | NOT_FINITE | NOT_A_NUMBER
    if high is not None:
        above = st.floats(min_value=high, max_value=1e12, allow_nan=False)
        out |= above.filter(lambda x: x > high or (high_open and x == high)).map(_num)
    return out


def bad_choice(valid: tuple[str, ...]) -> st.SearchStrategy[str]:
    return _text("qwxzQWXZ%_").filter(lambda s: s not in valid)


def case(base: list[str], options: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[list[str]]:
    """``base`` with one of ``options`` set to a bad value, or with an unknown option."""
    unknown = _text("qwxz").map(lambda s: [*base, f"--no-such-{s}", "1"])
    if not options:
        return unknown
    one_bad = st.sampled_from(sorted(options)).flatmap(lambda opt: options[opt].map(lambda v: [*base, opt, v]))
    return one_bad | unknown


TRAIN = ["train", "--data", "digits", "--model", "mlp:8", "--steps", "3", "-q"]
TRAIN_BAD = {
    "--epochs": bad_float(0, low_open=True), "--steps": bad_int(1), "--grad-evals": bad_int(1),
    "--lr": bad_float(0, low_open=True), "--momentum": bad_float(0, 1, high_open=True),
    "--weight-decay": bad_float(0), "--batch-size": bad_int(1), "--seed": bad_int(0),
    "--train-subset": bad_int(1), "--checkpoint-every": bad_int(1), "--data": bad_choice(()),
    "--optimizer": bad_choice(()), "--scheduler": st.sampled_from(["step:1:-5", "step:0:0.5", "step:1:2", "step:x",
                                                                  "step:nan:0.5", "cosine:2", "linear"]),
    "--model": st.sampled_from(["mlp:100000000000", "mlp:abc", "mlp", "transformer", "lstm:8", "mlp:-3"]),
    "--resume": bad_choice(()),
}
MEASURE = ["measure", RUN, "--hessian"]
MEASURE_BAD = {"--k": bad_int(1), "--examples": bad_int(1), "--samples": bad_int(1), "--seed": bad_int(0),
               "--beta": bad_float(0, low_open=True), "--dtype": bad_choice(("float32", "float64")),
               "--device": bad_choice(())}
JAMMING_COMMON = {"--P": bad_int(1), "--d": bad_int(1), "--seeds": bad_int(1), "--max-iter": bad_int(1),
                  "--polish": bad_int(0), "--polish-time": bad_float(0, low_open=True),
                  "--method": bad_choice(("fast", "adam")), "--activation": bad_choice(()),
                  "--data": bad_choice(("random",))}
EXPLORE_RUN = {"--steps": bad_int(1), "--walkers": bad_int(1), "--temperature": bad_float(0, low_open=True),
               "--step-size": bad_float(0, low_open=True), "--seed": bad_int(0), "--potential": _text("qwxz%"),
               "--hidden": NOT_A_NUMBER, "--classes": NOT_A_NUMBER}
PERCEPTRON = {"--n": bad_int(1), "--alpha": bad_float(0, low_open=True), "--seed": bad_int(0),
              "--k": bad_int(1) | st.sampled_from(["2", "4", "10"])}


@st.composite
def missing_run_ids(draw) -> str:
    run_id = draw(st.text(alphabet="%_*?[]'\"abcz019 .", min_size=1, max_size=12))
    if run_id.startswith("-") or RUN.startswith(run_id):
        run_id = "%" + run_id
    return run_id


BAD_ARGVS = st.one_of(
    case(TRAIN, TRAIN_BAD),
    case(["runs", "list"], {"--store": st.just("/dev/null")}),
    missing_run_ids().map(lambda r: ["runs", "show", r]),
    missing_run_ids().map(lambda r: ["measure", r, "--hessian"]),
    case(MEASURE, MEASURE_BAD),
    case(["jamming", "locate"], {**JAMMING_COMMON, "--depth": bad_int(1),
                                 "--rtol": bad_float(0, 1, low_open=True, high_open=True)}),
    case(["jamming", "phase-diagram"], {**JAMMING_COMMON, "--depths": NOT_A_NUMBER | st.sampled_from(["0", "2,-1"])}),
    case(["jamming", "stats", "--N", "100"], {**JAMMING_COMMON, "--N": bad_int(1), "--depth": bad_int(1)}),
    case(["explore", "run"], EXPLORE_RUN),
    case(["explore", "connect", "--db", "/nonexistent/landscape.sqlite"], {"--cycles": bad_int(1),
                                                                         "--images": bad_int(1)}),
    case(["explore", "graph", "--db", "/nonexistent/landscape.sqlite"], {"--levels": bad_int(1)}),
    case(["explore", "metrics", "--db", "/nonexistent/landscape.sqlite"], {"--temperature": bad_float(0, low_open=True)}),
    case(["explore", "export", "--db", "/nonexistent/landscape.sqlite"], {"--out": st.just("/dev/null")}),
    case(["perceptron", "solve"], {**PERCEPTRON, "--solver": bad_choice(())}),
    case(["perceptron", "entropy"], {**PERCEPTRON, "--method": bad_choice(("bp", "exact")),
                                     "--damping": bad_float(0, 1, high_open=True)}),
    case(["perceptron", "local-entropy"], {**PERCEPTRON, "--n-gamma": bad_int(1),
                                           "--distances": bad_float(0, 0.5, low_open=True),
                                           "--reference": _text("qwxz")}),
    case(["study", "list"], {}),
    case(["study", "run", "compare-optimizers"], {
        "--set": (bad_int(1) | st.sampled_from(["1.5", "true", "[1]"])).map(lambda v: f"seeds={v}"),
        "--workers": bad_int(1), "--threads": bad_int(1), "--dask": _text("qwxz%/"), "--scale": bad_choice(())}),
    _text("qwxz").map(lambda name: ["study", "run", name]),
    case(["study", "report", "jamming"], {"--scale": bad_choice(())}),
    case(["report"], {"--out": st.just("/dev/null")}),
)


@settings(max_examples=250, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(argv=BAD_ARGVS)
def test_bad_arguments_to_any_verb_are_one_line_exit_2_and_write_nothing(home, argv):
    before = snapshot(home)
    r = invoke(argv, home)
    lines = r.err.strip().splitlines()
    assert r.code == 2, (argv, r.code, r.out[-500:], r.err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("flatminima: error: "), (argv, r.err[-2000:])
    assert "Traceback" not in r.err + r.out, argv
    assert snapshot(home) == before, f"{argv} changed the store"


def test_bad_values_are_bad():
    """The generators of bad values never produce a valid one (or the fuzz test would run real work)."""
    @settings(max_examples=100, derandomize=True, deadline=None)
    @given(st.data())
    def check(data):
        v = data.draw(bad_float(0, low_open=True))
        try:
            assert not (math.isfinite(float(v)) and float(v) > 0)
        except ValueError:
            pass
        v = data.draw(bad_int(1))
        try:
            assert int(v) < 1
        except ValueError:
            pass

    check()
