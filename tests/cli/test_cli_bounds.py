"""The bounds of the command line's numeric flags: the argument types and the flags that use them."""

from __future__ import annotations

import argparse

import pytest

from dermogaze.cli import main
from dermogaze.cli.common import int_in, number_in


def test_int_in_names_the_end_crossed_and_why():
    parse = int_in(100, 1000, ("too few", "too many"))
    assert parse("100") == 100 and parse(" 1000 ") == 1000
    with pytest.raises(argparse.ArgumentTypeError, match="^expected an integer >= 100, got 99: too few$"):
        parse("99")
    with pytest.raises(argparse.ArgumentTypeError, match="^expected an integer <= 1000, got 1001: too many$"):
        parse("1001")
    with pytest.raises(argparse.ArgumentTypeError, match="^expected an integer, got '1e3'$"):
        parse("1e3")
    with pytest.raises(argparse.ArgumentTypeError, match="^expected an integer <= 5, got 6: one reason$"):
        int_in(0, 5, "one reason")("6")
    with pytest.raises(argparse.ArgumentTypeError, match="^expected an integer >= 1, got 0$"):
        int_in(1)("0")
    assert int_in(1)(str(10**30)) == 10**30  # no upper end


def test_number_in_refuses_non_finite_and_out_of_range_numbers():
    parse = number_in(0, 4, "why")
    assert parse("4") == 4.0 and parse("1e-3") == 0.001
    for text, message in [("0", "expected a number > 0, got 0: why"), ("4.5", "expected a number <= 4, got 4.5: why"),
                          ("nan", "expected a finite number, got 'nan'"), ("-inf", "expected a finite number"),
                          ("wide", "expected a number, got 'wide'")]:
        with pytest.raises(argparse.ArgumentTypeError, match=f"^{message}"):
            parse(text)


BOUNDED = [
    (["evaluate", "--checkpoint", "x.pt", "--bootstrap", "99"], "argument --bootstrap: expected an integer >= 100, "
     "got 99: the ends of a 95% interval are the 2.5th and 97.5th percentiles of the resamples: fewer give intervals "
     "that mean nothing"),
    (["evaluate", "--checkpoint", "x.pt", "--bootstrap", "100001"], "expected an integer <= 100000, got 100001: more "
     "add time, not precision"),
    (["evaluate", "--checkpoint", "x.pt", "--batch-size", "1025"],
     "argument --batch-size: expected an integer <= 1024"),
    (["evaluate", "--checkpoint", "x.pt", "--seed", str(2**32)], "argument --seed: expected an integer <= 4294967295"),
    (["evaluate", "--checkpoint", "x.pt", "--workers", "65"], "argument --workers: expected an integer <= 64"),
    (["compare", "run", "--bootstrap", "1"], "argument --bootstrap: expected an integer >= 100, got 1"),
    (["table3", "--data", "c", "--out", "o", "--epochs", "1001"], "argument --epochs: expected an integer <= 1000"),
    (["table3", "--data", "c", "--out", "o", "--jobs", "8"], "argument --jobs: expected an integer <= 7"),
    (["data", "prepare", "--isic", "i", "--out", "o", "--size", "2049"], "argument --size: expected an integer <= "
     "2048, got 2049: each cached image takes size² × 3 bytes"),
    (["data", "prepare", "--isic", "i", "--out", "o", "--workers", "0"],
     "argument --workers: expected an integer >= 1"),
    (["data", "synth", "--out", "o", "--width", "2049"], "argument --width: expected an integer <= 2048, got 2049: "
     "larger pictures take minutes and gigabytes each to draw"),
    (["data", "synth", "--out", "o", "--height", "31"], "argument --height: expected an integer >= 32, got 31: the "
     "network's smallest input is 32 px"),
    (["data", "synth", "--out", "o", "--val", "10001"], "argument --val: expected an integer <= 10000"),
    (["train", "--workers", "65"], "argument --workers: expected an integer <= 64"),
    (["predict", "--checkpoint", "x.pt", "--data", "c", "--format", "isic2017-part3", "--out", "o.csv",
      "--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got 0"),
    (["serve", "--checkpoint", "x.pt", "--port", "65536"], "argument --port: expected an integer <= 65535"),
    (["model", "summary", "vgg", "--steps", "65"], "argument --steps: expected an integer <= 64"),
    (["model", "summary", "vgg", "--image-size", "1056"], "argument --image-size: expected an integer <= 1024"),
    (["model", "summary", "vgg", "--width", "nan"], "argument --width: expected a finite number, got 'nan'"),
    (["sweep", "--trials", "10001"], "argument --trials: expected an integer <= 10000"),
    (["sweep", "--heartbeat", "3601"], "argument --heartbeat: expected an integer <= 3600"),
    (["sweep", "--prune-warmup", "1001"], "argument --prune-warmup: expected an integer <= 1000"),
]


@pytest.mark.parametrize(("argv", "message"), BOUNDED, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BOUNDED])
def test_a_flag_beyond_its_bound_is_one_line_before_any_work(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("dermogaze: error: ")
    assert message in err, err
    assert list(tmp_path.iterdir()) == []
